"""A length curriculum (issue 18): training moves through stages of increasing video length, and
leaves a stage when every gate passes on the held-out evaluation, or, when
`max_steps_per_stage` is set, after that many steps with a logged note saying which gates had
not passed. The last stage is never left: training stays in it until `num_steps`.

Every `steps_per_stage` steps of a stage the trainer evaluates the tuned model on held-out
prompts at the stage's length and hands the numbers to `decide`. The stage and its start are
part of the checkpoint (`state_dict`), so a resumed run continues in its stage; every check is a
`split: "curriculum"` record of metrics.jsonl, and `report()` lists each stage with how it ended.

Gates read the evaluation's means of the tuned model: the training reward (by its reward_fn
name), every `eval_metrics` name (`seam` is one whenever `long.window` is set), a set metric such
as `fvd`, and `motion`. A gate is a minimum (`+curriculum.gate.seam=0.8`, or ">=0.8") or a
maximum ('+curriculum.gate.fvd="<=300"').

Written here because no maintained library schedules video lengths by held-out gates.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from typing import Any

OPS = {">=": operator.ge, "<=": operator.le}
_RULE = re.compile(r"^\s*(>=|<=)?\s*([-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Gate:
    name: str
    op: str
    threshold: float

    def passes(self, value: float | None) -> bool:
        return value is not None and math.isfinite(value) and OPS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.name} {self.op} {self.threshold:g}"


def parse_gates(gate: dict[str, Any]) -> list[Gate]:
    """`curriculum.gate` as Gates: a number is a minimum; a string ">=x" or "<=x" says which."""
    gates = []
    for name, rule in (gate or {}).items():
        match = None if isinstance(rule, bool) else _RULE.match(str(rule))
        if match is None:
            raise ValueError(f"curriculum.gate.{name}={rule!r}: give a number (the minimum the "
                             "held-out mean must reach) or a string '>=x' / '<=x'")
        gates.append(Gate(str(name), match.group(1) or ">=", float(match.group(2))))
    return gates


class Curriculum:
    """The stages' lengths, their gates and where training stands. Plain numbers in and out:
    the trainer runs the evaluations and applies `num_frames`."""

    def __init__(self, lengths: list[int], gate: dict[str, Any] | None = None,
                 steps_per_stage: int = 20, max_steps_per_stage: int | None = None) -> None:
        lengths = [int(n) for n in lengths]
        if not lengths or min(lengths) < 1:
            raise ValueError(f"curriculum.lengths={lengths}: give each stage's num_frames, e.g. [16,32,48]")
        if any(b <= a for a, b in zip(lengths, lengths[1:])):
            raise ValueError(f"curriculum.lengths={lengths}: stages must grow in length, each "
                             "longer than the one before")
        if steps_per_stage < 1:
            raise ValueError(f"curriculum.steps_per_stage={steps_per_stage}: use at least 1")
        if max_steps_per_stage is not None and max_steps_per_stage < steps_per_stage:
            raise ValueError(f"curriculum.max_steps_per_stage={max_steps_per_stage} is below "
                             f"steps_per_stage={steps_per_stage}: a stage would end before its "
                             "first check; raise it or set it to null")
        self.gates = parse_gates(gate or {})
        if not self.gates and max_steps_per_stage is None and len(lengths) > 1:
            raise ValueError("curriculum: no gate and no max_steps_per_stage, so the first stage "
                             "would never end; add a gate (+curriculum.gate.<metric>=<minimum>) or "
                             "set curriculum.max_steps_per_stage")
        self.lengths, self.steps_per_stage = lengths, steps_per_stage
        self.max_steps_per_stage = max_steps_per_stage
        self.stage, self.stage_start = 0, 0
        self.stages = [{"stage": k + 1, "num_frames": n, "start": 0 if k == 0 else None, "end": None,
                        "outcome": None, "values": None} for k, n in enumerate(lengths)]

    @classmethod
    def from_config(cls, cfg: Any) -> "Curriculum | None":
        """`cfg.curriculum` (vader.config.CurriculumConfig); None when `lengths` is empty."""
        c = getattr(cfg, "curriculum", None)
        if c is None or not c.lengths:
            return None
        return cls(list(c.lengths), dict(c.gate), c.steps_per_stage, c.max_steps_per_stage)

    def check_names(self, measured: list[str]) -> None:
        """Every gate reads a number the evaluation makes."""
        for gate in self.gates:
            if gate.name not in measured:
                raise ValueError(f"curriculum.gate.{gate.name}: the held-out evaluation does not "
                                 f"measure {gate.name!r}; gates read {measured} (add a reward_fn "
                                 f"option to eval_metrics=[...] to measure it)")

    @property
    def num_frames(self) -> int:
        return self.lengths[self.stage]

    @property
    def last(self) -> bool:
        return self.stage == len(self.lengths) - 1

    def describe(self) -> str:
        return (f"curriculum stage {self.stage + 1}/{len(self.lengths)} ({self.num_frames} frames, "
                f"since step {self.stage_start})")

    def folder(self) -> str:
        """Where this stage's checks write their evaluation (each overwrites the one before, so
        the stage's final evaluation is what stays)."""
        return f"stage{self.stage + 1}_{self.num_frames}f"

    def due(self, step: int) -> bool:
        """A gate check at this step: every `steps_per_stage` steps of a stage that is not the last."""
        return not self.last and step > self.stage_start and \
            (step - self.stage_start) % self.steps_per_stage == 0

    def decide(self, step: int, values: dict[str, float]) -> dict[str, Any]:
        """The check at `step` given the held-out means: advance when every gate passes, or when
        the stage has run `max_steps_per_stage`. Returns the record metrics.jsonl keeps."""
        results = {str(g): g.passes(values.get(g.name)) for g in self.gates}
        passed = bool(results) and all(results.values())
        forced = not passed and self.max_steps_per_stage is not None and \
            step - self.stage_start >= self.max_steps_per_stage
        record = {"split": "curriculum", "step": step, "stage": self.stage + 1,
                  "num_frames": self.num_frames, "values": dict(values), "gates": results,
                  "passed": passed, "advanced": passed or forced}
        if passed:
            record["note"] = f"stage {self.stage + 1} passed its gates at step {step}"
        elif forced:
            failing = [g for g, ok in results.items() if not ok]
            record["note"] = (f"stage {self.stage + 1} ran max_steps_per_stage="
                              f"{self.max_steps_per_stage} steps; advancing without passing "
                              f"{', '.join(failing) or 'any gate'}")
        else:
            return record
        self._end(step, "gates passed" if passed else "max_steps_per_stage", values)
        self.stage, self.stage_start = self.stage + 1, step
        self.stages[self.stage]["start"] = step
        record["note"] += f"; now {self.describe()}"
        return record

    def finish(self, step: int, values: dict[str, float]) -> None:
        """Training ended (num_steps) in the current stage: its final evaluation's numbers."""
        self._end(step, "training ended", values)

    def _end(self, step: int, outcome: str, values: dict[str, float]) -> None:
        self.stages[self.stage].update(end=step, outcome=outcome, values=dict(values))

    def report(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.stages]

    def state_dict(self) -> dict[str, Any]:
        return {"lengths": list(self.lengths), "stage": self.stage, "stage_start": self.stage_start,
                "stages": self.report()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:  # a checkpoint written without a curriculum
            raise ValueError("the checkpoint was written by a run without curriculum.lengths; "
                             "resume it without a curriculum, or start over (resume=never)")
        if list(state["lengths"]) != self.lengths:
            raise ValueError(f"the checkpoint's curriculum.lengths were {state['lengths']}, not "
                             f"{self.lengths}; resume with the same lengths or start over (resume=never)")
        self.stage, self.stage_start = int(state["stage"]), int(state["stage_start"])
        self.stages = [dict(s) for s in state["stages"]]


def gate_values(summary: dict[str, Any], model: str = "tuned") -> dict[str, float]:
    """The held-out means gates read from an evaluation summary: each reward by name, each set
    metric (fvd), and motion."""
    numbers = summary["per_model"][model]
    values = {name: numbers[f"reward/{name}"]["mean"] for name in summary["rewards"]}
    values.update({name: float(numbers[name]) for name in summary.get("set_metrics", [])})
    values["motion"] = numbers["motion"]["mean"]
    return values
