"""Work-paced rounds: the pacing decision, the v3 record fields, paced plans, config and worker counts."""

from __future__ import annotations

import math
from concurrent.futures import Future

import pytest

from peerd.core import pace
from peerd.core import schedule as sch
from peerd.core.bridge import Bridge, WorkerStats
from peerd.core.config import ConfigError, load_config
from peerd.net.peer_record import PeerRecord
from peerd.node.health import RoundLog
from tests.unit.test_worker import make_worker, wait_steps

RUN, P, H = "run", 2, 30


def cand(i: int, since: tuple[int, ...], rate: float = 4.0, done: bool = False) -> sch.Candidate:
    return sch.Candidate(f"p{i}", f"h:{i}", 3, "x", True, done, True, rate, since)


def decide(cands: list[sch.Candidate], r: int = 10, final: bool = False) -> pace.PaceDecision:
    # 4 steps/s, 2 s rounds: 8 steps per round; no lead, so projections are the announced counts
    return pace.decide(cands, H, P, r, round_s=2.0, lead_s=0.0, final=final)


def test_a_fragment_is_due_from_half_a_round_before_target() -> None:
    assert decide([cand(i, (25, 10)) for i in range(3)]).fragment == pace.HOLD  # 25 < 30 - 8/2
    d = decide([cand(i, (26, 10)) for i in range(3)])
    assert d.fragment == 0 and d.per_round == 8 and d.lag == 0 and not d.behind


def test_the_most_overdue_fragment_goes_first() -> None:
    assert decide([cand(i, (40, 50)) for i in range(3)]).fragment == 1
    assert decide([cand(i, (40, 40)) for i in range(3)]).fragment == 0  # ties: lowest index


def test_the_median_ignores_one_outlier() -> None:
    honest = [cand(i, (10, 12)) for i in range(3)]
    assert decide([*honest, cand(9, (10**9, 10**9), rate=1e6)]).fragment == pace.HOLD
    slow = cand(9, (3, 4), rate=4 / 3)  # a 3x slower member does not hold a due fragment back
    assert decide([cand(i, (28, 0)) for i in range(3)] + [slow]).fragment == 0


def test_lead_projects_counts_to_the_snapshot() -> None:
    cands = [cand(i, (24, 0)) for i in range(3)]
    assert pace.decide(cands, H, P, 1, 2.0, lead_s=0.0, final=False).fragment == pace.HOLD
    assert pace.decide(cands, H, P, 1, 2.0, lead_s=0.5, final=False).fragment == 0  # 24 + 4*0.5 >= 26


def test_behind_when_the_swarm_cannot_sync_that_often() -> None:
    d = decide([cand(i, (30 + 20, 30 + 4)) for i in range(3)])
    assert d.fragment == 0 and d.lag == 20 and d.behind


def test_final_plans_take_fragments_round_robin_and_unannounced_counts_fall_back() -> None:
    cands = [cand(i, (0, 0), done=True) for i in range(3)]
    assert [decide(cands, r=r, final=True).fragment for r in (4, 5)] == [0, 1]
    old = [sch.Candidate(f"p{i}", f"h:{i}", 3, "x", True, False) for i in range(3)]  # v1/v2 records
    assert decide(old, r=7).fragment == 1


def test_pacing_fields_do_not_change_candidate_identity() -> None:
    assert cand(1, (1, 2), rate=3.0) == cand(1, (5, 6), rate=9.0)


def record(since: tuple[int, ...] | None, reachable: bool = True) -> PeerRecord:
    return PeerRecord("p", "h:1", 1, 2, "x", ("a", "b"), 1.0, 3, True, False, reachable, 2.5, since)


def test_paced_record_is_v3_and_round_trips() -> None:
    for reachable in (True, False):
        value = record((4, 7), reachable).to_value()
        assert value["v"] == 3 and value["steps_since"] == [4, 7]
        back = PeerRecord.from_value("p", value)
        assert back == record((4, 7), reachable) and back.candidate().steps_since == (4, 7)
    assert record(None).to_value()["v"] == 1 and "steps_since" not in record(None).to_value()
    assert PeerRecord.from_value("p", record(None).to_value()).candidate().steps_since == ()


@pytest.mark.parametrize("patch", [
    {"steps_since": [1]}, {"steps_since": [1, -1]}, {"steps_since": [1, True]}, {"steps_since": [1, 2.0]},
    {"steps_since": [1, 1 << 41]}, {"steps_per_s": math.nan}, {"steps_per_s": -1.0}, {"steps_per_s": 1e9},
    {"steps_per_s": True}, {"steps_since": "12"},
])
def test_malformed_pacing_fields_are_refused(patch: dict) -> None:
    with pytest.raises(ValueError):
        PeerRecord.from_value("p", record((1, 2)).to_value() | patch)
    with pytest.raises(ValueError):  # v2/v1 records carry no pacing fields
        PeerRecord.from_value("p", record(None, False).to_value() | {"steps_since": [1, 2], "steps_per_s": 1.0})


def cands3() -> list[sch.Candidate]:
    return [cand(i, (0, 0)) for i in range(3)]


def test_paced_plans_carry_their_fragment_or_hold() -> None:
    hold = sch.make_plan(RUN, 4, P, "p0", cands3(), 2.0, 0.9, now=8.0, paced=H, fragment=pace.HOLD)
    odd = sch.make_plan(RUN, 4, P, "p0", cands3(), 2.0, 0.9, now=8.0, paced=H, fragment=1)  # round 4: not 4 mod 2
    assert hold is not None and odd is not None and not hold.syncs and odd.syncs
    for plan in (hold, odd):
        assert plan.to_record()["paced"] == H and sch.plan_from_record(plan.to_record(), RUN, P) == plan
    assert sch.make_plan(RUN, 4, P, "p0", cands3(), 2.0, 0.9, now=8.0, paced=H) is None  # paced needs a choice
    plain = sch.make_plan(RUN, 4, P, "p0", cands3(), 2.0, 0.9, now=8.0)
    assert plain is not None and "paced" not in plain.to_record()
    for bad in [plain.to_record() | {"fragment": -1}, odd.to_record() | {"paced": 0},
                odd.to_record() | {"paced": "30"}, odd.to_record() | {"paced": True},
                hold.to_record() | {"final": True}, odd.to_record() | {"fragment": -2},
                odd.to_record() | {"fragment": P}]:
        with pytest.raises(sch.PlanError):
            sch.plan_from_record(bad, RUN, P)


def test_target_h_excludes_the_idling_knob_and_paces_gossip_too() -> None:
    assert load_config(None, ["round.target_h=32"]).round.target_h == 32
    with pytest.raises(ConfigError, match="max_steps_per_round"):
        load_config(None, ["round.target_h=32", "train.max_steps_per_round=8"])
    with pytest.raises(ConfigError, match="max_steps_per_round"):
        load_config(None, ["round.target_h=32", "train.max_steps_per_round=8", "mixing.mode=gossip"])
    assert load_config(None, ["round.target_h=32", "mixing.mode=gossip"]).pace_h == 32


def test_unset_target_h_paces_each_mode_by_its_default_and_never_invalidates_a_config() -> None:
    from peerd.core.config import DEFAULT_GOSSIP_TARGET_H, DEFAULT_TARGET_H, with_overrides

    cfg = load_config(None, [])
    assert cfg.round.target_h is None and cfg.pace_h == DEFAULT_TARGET_H > 0
    assert load_config(None, ["round.target_h=0"]).pace_h == 0  # explicit 0: clock rounds
    assert load_config(None, ["round.target_h=0", "mixing.mode=gossip"]).pace_h == 0
    # A pairwise exchange mixes less than DiLoCo's all-reduce: gossip's default H is shorter.
    assert load_config(None, ["mixing.mode=gossip"]).pace_h == DEFAULT_GOSSIP_TARGET_H
    assert 0 < DEFAULT_GOSSIP_TARGET_H < DEFAULT_TARGET_H
    # Unset, the default steps aside where an explicit target_h is refused.
    assert load_config(None, ["train.max_steps_per_round=8"]).pace_h == 0
    assert load_config(None, ["train.max_steps_per_round=8", "mixing.mode=gossip"]).pace_h == 0
    # A resolved default is not written back: a copy switched to gossip takes gossip's.
    assert with_overrides(cfg, {"mixing.mode": "gossip"}).pace_h == DEFAULT_GOSSIP_TARGET_H


def test_unset_outer_step_takes_the_measured_default_of_the_pacing() -> None:
    from peerd.core.config import DILOCO_OUTER_LR, DILOCO_OUTER_MOMENTUM

    def outer(*sets: str) -> tuple[float, float]:
        cfg = load_config(None, list(sets))
        return cfg.effective_outer_lr, cfg.effective_outer_momentum

    assert outer() == (DILOCO_OUTER_LR, DILOCO_OUTER_MOMENTUM)  # work-paced diloco
    assert outer("round.target_h=0") == (1.0, 0.0)  # clock rounds: momentum measured harmful
    assert outer("mixing.mode=gossip") == (1.0, 0.0)  # paced gossip too: adopt the trained parameters
    assert outer("mixing.mode=gossip", "round.target_h=50") == (1.0, 0.0)
    assert outer("train.max_steps_per_round=8") == (1.0, 0.0)  # legacy pacing: clock rounds
    assert outer("mixing.outer_lr=1.0") == (1.0, DILOCO_OUTER_MOMENTUM)  # each key on its own
    assert outer("round.target_h=0", "mixing.outer_momentum=0.9") == (1.0, 0.9)
    with pytest.raises(ConfigError, match="outer_momentum"):
        load_config(None, ["mixing.outer_momentum=1.0"])


def test_a_final_round_steps_plain_whatever_the_outer_settings() -> None:
    from types import SimpleNamespace

    from peerd.core.config import DILOCO_OUTER_LR, DILOCO_OUTER_MOMENTUM
    from peerd.mixing.diloco import outer_step

    cfg = load_config(None, [])
    mid, end = SimpleNamespace(final=False), SimpleNamespace(final=True)
    assert outer_step(mid, cfg) == (DILOCO_OUTER_LR, DILOCO_OUTER_MOMENTUM)  # type: ignore[arg-type]
    # The run's model is the workers' average: no momentum past it, even where the outer gradient is zero.
    assert outer_step(end, cfg) == (1.0, 0.0)  # type: ignore[arg-type]
    assert outer_step(end, load_config(None, ["mixing.outer_lr=0.7", "mixing.outer_momentum=0.9"])) == (1.0, 0.0)  # type: ignore[arg-type]


def test_worker_counts_steps_since_each_fragment_sync() -> None:
    worker, bridge, layout = make_worker(max_steps=40)
    worker.start()
    try:
        wait_steps(bridge, 5)
        snap = bridge.submit("snapshot", fragment=1).result(10)
        assert snap.steps == snap.step >= 5
        bridge.submit("merge", token=snap.token, theta=snap.theta).result(10)
        stats = bridge.stats
        assert stats.steps_since[0] == stats.step and stats.steps_since[1] == stats.step - snap.steps
        assert list(worker.synced_h) == [(1, snap.steps)]
        wait_steps(bridge, 40)
        assert worker.paced_idle_s == 0.0  # done is not pacing
        saved = worker.export_state()
    finally:
        assert worker.stop(10)
    other, _, _ = make_worker()
    other.restore(saved)
    assert other.steps_since == worker.steps_since
    other.restore({k: v for k, v in saved.items() if k != "steps_since"})  # a checkpoint from before pacing
    assert other.steps_since == [0, 0]


def test_held_rounds_are_not_missed_rounds_for_health() -> None:
    log = RoundLog()
    for _ in range(10):
        log.observe("held", "not_due")
    log.observe("skipped", "no_plan")
    assert log.snapshot() == (0, 1, ["held:not_due"] * 7 + ["skipped:no_plan"])


def test_announced_counts_leave_out_merges_the_worker_has_not_applied_yet() -> None:
    bridge = Bridge()
    bridge.stats = WorkerStats(step=50, steps_since=(30, 50))
    queued: Future[None] = Future()
    bridge.merging(0, 28, queued)
    assert bridge.announced_stats().steps_since == (2, 50) and bridge.announced_stats().step == 50
    bridge.stats = WorkerStats(step=51, steps_since=(3, 51))  # the worker applied it ...
    assert bridge.announced_stats().steps_since == (0, 51)  # ... before resolving: subtracted twice, clamped
    queued.set_result(None)
    assert bridge.announced_stats().steps_since == (3, 51)
