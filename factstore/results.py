"""What the façade (api.py) returns where a caller reads fields: typed, frozen, defined once, and
served as they are by the HTTP layer and printed as they are by `--json`."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Result(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenProb(_Result):
    token: str
    prob: float


class AnswerProb(_Result):
    answer: str
    prob: float


class Reply(_Result):
    """A model's top next tokens after PROMPT and its greedy continuation."""

    prompt: str
    top: list[TokenProb]
    continuation: str


class Answer(Reply):
    """`ask` on the head: the reply and how many edits the head holds."""

    edits_applied: int


class Side(Reply):
    """One side of a comparison: the reply and the probability of each answer asked about."""

    answers: list[AnswerProb]


class Comparison(_Result):
    """One prompt on the head and on the base model."""

    prompt: str
    head: Side
    base: Side
    edits_applied: int


class Imported(_Result):
    """What `pull --import-edits` added to the local store."""

    alias: str
    base_revision: str
    edits_added: int
    edits_total: int
    release: int
    rebuilt_identical: bool


class SchemaUpgrade(_Result):
    """`db upgrade`: the schema revision before and after, and the latest one."""

    previous: str | None
    current: str | None
    head: str


class SchemaStatus(_Result):
    """`db current`: the database (password hidden), its schema revision and the latest one."""

    url: str
    current: str | None
    head: str


class StatsRecord(_Result):
    """A recorded C, as `stats compute` and `stats merge` give it."""

    id: int
    layer: int
    module: str
    corpus: str
    tokens: int
    dtype: str
    path: str
    sha256: str


class StatsLayers(_Result):
    """C of several layers from one pass."""

    layers: list[StatsRecord]


class ShardSum(_Result):
    """One shard's float64 partial sum of C, for `stats merge`."""

    layer: int
    shard: str  # "I/N"
    tokens: int
    path: str
    sha256: str


class StatsPushed(_Result):
    repo: str
    commit: str
    uploaded: int  # files new to the repository
    files: int  # files its index lists


class StatsPulled(_Result):
    repo: str
    commit: str
    layers: list[int]  # layers whose C was recorded here
    skipped: int  # files of other models, or already here
