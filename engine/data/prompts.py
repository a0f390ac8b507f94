"""Which text each image trains with: its own prompt, one prompt for all, or its class name in a template."""

from __future__ import annotations

from engine.data.dataset import ImageSet
from engine.errors import InputError

CLASS_FIELD = "{class}"
DEFAULT_TEMPLATE = CLASS_FIELD


def clean_prompt(text: str) -> str:
    """A prompt as the text encoder sees it: runs of white space (a line break in a quoted CSV field) are one
    space, none at either end. CLIP's tokenizer cleans text the same way, so nothing the model sees changes,
    and the prompt a file stores and the app shows stays one line."""
    return " ".join(text.split())


def class_prompt(template: str, class_name: str) -> str:
    """The template with its "{class}" filled: "chest x-ray, {class}" + "pneumonia" → "chest x-ray, pneumonia".

    Only "{class}" is a field; any other brace is the user's text (str.format would fail on it or read it)."""
    if CLASS_FIELD not in template:
        raise InputError(None, f"the prompt template '{template}' has no {CLASS_FIELD} for the class name to go in")
    prompt = clean_prompt(template.replace(CLASS_FIELD, class_name))
    if not prompt:
        raise InputError(None, f"the prompt template '{template}' with class '{class_name}' is an empty prompt")
    return prompt


def training_prompts(data: ImageSet, template: str, prompt: str) -> list[str]:
    """One prompt per image of `data`: the data's own (a prompts.csv), else `prompt` for every image when it is
    not empty, else `template` filled with each image's class name."""
    if data.prompts is not None:
        return list(data.prompts)
    one = clean_prompt(prompt or "")
    if one:
        return [one] * len(data)
    if data.labels is None:
        raise InputError(data.source or None, "has no prompts for its images (no prompts.csv beside them) and no "
                                              "classes to fill the prompt template with: give one prompt for all "
                                              "images")
    by_class = {int(k): class_prompt(template, _class_name(data, int(k))) for k in set(data.labels.tolist())}
    return [by_class[int(k)] for k in data.labels]


def _class_name(data: ImageSet, index: int) -> str:
    return data.class_names[index] if index < len(data.class_names) else str(index)
