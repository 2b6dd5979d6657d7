"""Pure foundations shared by every layer: configuration, errors, clocks and round arithmetic."""
