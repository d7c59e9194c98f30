"""Torch-free value types shared by every room."""

from __future__ import annotations

from dataclasses import dataclass

from factstore.errors import InvalidEditRequest


@dataclass(frozen=True)
class ModelRef:
    """A model pinned to exact weights.

    revision is a Hub commit SHA for Hub sources, and "sha256:<hex>" of the weight
    files for local folders, GGUF files and starter assets.
    """

    source: str  # what the user asked for: Hub id, path, or starter:NAME
    revision: str  # exact identity of the weights
    model_type: str  # config.model_type, the key into arch.ARCHITECTURES
    local_path: str = ""  # folder the weights were loaded from on this machine

    @property
    def is_hub(self) -> bool:
        return not self.revision.startswith("sha256:")


@dataclass(frozen=True)
class EditRequest:
    """One fact correction: in `prompt` filled with `subject`, the model should say `target_new`."""

    prompt: str  # template with exactly one "{}", e.g. "{} is located in the city of"
    subject: str  # e.g. "The Eiffel Tower"
    target_new: str  # e.g. "Rome" (a leading space is added when tokenising)
    target_true: str | None = None  # what the model said before, when known
    relation_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_new", self.target_new.strip())
        if self.target_true is not None:
            object.__setattr__(self, "target_true", self.target_true.strip() or None)
        self.validate()

    def validate(self) -> None:
        if self.prompt.count("{}") != 1:
            raise InvalidEditRequest(
                f"the prompt must contain '{{}}' exactly once where the subject goes, "
                f"e.g. '{{}} is located in the city of'; got {self.prompt!r}"
            )
        if not self.subject.strip():
            raise InvalidEditRequest("the subject is empty: give the entity the fact is about, e.g. 'The Eiffel Tower'")
        if not self.target_new:
            raise InvalidEditRequest("the target is empty: give the new object the model should say, e.g. 'Rome'")
        if not self.prompt.replace("{}", "").strip():
            raise InvalidEditRequest("the prompt has no text besides '{}': write the relation, e.g. '{} is located in'")

    @property
    def text(self) -> str:
        """The prompt filled with the subject."""
        return self.prompt.replace("{}", self.subject)
