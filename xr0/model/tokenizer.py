"""Tokenizers: the tiny byte-level BPE the project trains itself, and the official one read from
a checkpoint directory. Nothing is ever fetched from a hub.

The tiny tokenizer is trained deterministically on a corpus the project owns (the prompt
template, robot-task instructions, digits and common English words) with Qwen's pre-tokenizer
and Qwen's special tokens, so that prompts look exactly like the official ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from xr0.model.config import TINY_SPECIAL_IDS, TINY_VOCAB_SIZE

TINY_TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "assets" / "xr0-tiny"

# Qwen2/Qwen3's split pattern: single digits, words with one leading non-letter, punctuation runs.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = list(TINY_SPECIAL_IDS)  # in id order: <|endoftext|> = 0 ... </cot> = 8

_TASKS = [
    "transfer the cube", "insert the peg into the socket", "pick up the cube", "place the cube in the bowl",
    "open the drawer", "close the drawer", "fold the towel", "hand over the block", "stack the blocks",
    "put the red block on the blue block", "pour water into the cup", "wipe the table",
    "push the button", "turn on the light", "turn off the light", "open the gripper",
    "close the gripper", "move the left arm up", "move the right arm down", "slide the door open",
    "lift the lid", "put the bottle upright", "hang the mug on the rack", "sort the objects by color",
    "put the spoon in the cup", "pick the green apple", "grasp the handle and pull",
    "rotate the knob clockwise", "place the peg in the hole", "unplug the charger",
]
_WORDS = (
    "the a an of to in on into onto at by for with from and or not is are be this that it its "
    "left right up down back front top bottom middle center side near far above below over under "
    "red green blue yellow black white orange purple pink brown gray small large big tiny long short "
    "cube block peg socket bowl cup mug plate box drawer door lid bottle towel cloth table shelf "
    "handle knob button switch cable charger spoon fork knife apple banana ball toy object objects "
    "pick place put move push pull lift lower open close grasp grip release hold hand over insert "
    "remove rotate turn slide pour wipe fold stack sort transfer reach carry drop take give then "
    "arm arms gripper grippers wrist camera view views robot robots task tasks action actions "
    "one two three four five six seven eight nine ten first second third last next again slowly "
    "carefully quickly gently please now after before while until it them"
).split()
_PROMPT_TEMPLATE = (
    "<|im_start|>user\nThe following observations are captured from multiple views.\n"
    "# Ego View\n<|vision_start|><|image_pad|><|vision_end|>\n"
    "# Left-Wrist View\n<|vision_start|><|image_pad|><|vision_end|>\n"
    "# Right-Wrist View\n<|vision_start|><|image_pad|><|vision_end|>\n"
    "# Base View\n<|vision_start|><|image_pad|><|vision_end|>\n"
    "Generate robot actions for the task:\n{task} /no_cot<|im_end|>\n"
    "<|im_start|>assistant\n<cot></cot><|im_end|>\n"
)


def tiny_corpus() -> list[str]:
    """The training text of the tiny tokenizer, in a fixed order."""
    lines = []
    for task in _TASKS:
        for form in (task, task.capitalize(), task + ".", task.capitalize() + "."):
            lines.append(_PROMPT_TEMPLATE.replace("{task}", form))
    lines.append(" ".join(_WORDS))
    lines.append(" ".join(w.capitalize() for w in _WORDS))
    lines.append(" ".join(str(i) for i in range(1000)))
    lines.append("0.5 1.0 -1 +1 3.14 (x, y, z) [a, b] {k: v} 'quote' \"double\" a/b a-b a_b 50% #1 @ & ! ?")
    return lines


def build_tiny_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE tokenizer; the same corpus gives the same files."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Special tokens are whole units in the corpus, never pieces of words.
    tok.add_special_tokens(SPECIAL_TOKENS)
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    for text, expected in TINY_SPECIAL_IDS.items():
        got = tok.token_to_id(text)
        if got != expected:
            raise RuntimeError(f"special token {text} got id {got}, expected {expected}")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="right",
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def save_tiny_tokenizer(out_dir: str | Path = TINY_TOKENIZER_DIR) -> list[Path]:
    """Build the tiny tokenizer and write its files into out_dir; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = build_tiny_tokenizer().save_pretrained(str(out_dir))
    return [Path(p) for p in written if Path(p).exists()]


def load_tokenizer(directory: str | Path = TINY_TOKENIZER_DIR) -> PreTrainedTokenizerFast:
    """Load a tokenizer from local files only (the tiny one by default, or a checkpoint's own)."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        hint = ("run `python scripts/build_tiny_tokenizer.py` to build it"
                if directory == TINY_TOKENIZER_DIR else
                "copy the checkpoint's tokenizer files (tokenizer.json, tokenizer_config.json) there")
        raise FileNotFoundError(f"no tokenizer.json in {directory}: {hint}")
    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
