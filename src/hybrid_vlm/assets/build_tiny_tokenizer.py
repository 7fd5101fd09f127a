"""Regenerate ``tiny_tokenizer/tokenizer.json``, the small tokenizer shipped for tests, examples and tiny presets.

Run ``python src/hybrid_vlm/assets/build_tiny_tokenizer.py``. The output is deterministic: the same
``tokenizers`` version writes the same bytes, so a rebuild shows up in ``git diff`` only when something changed.

Ids are stable by construction: the byte-level BPE vocabulary comes first and the special tokens are appended
after it, so a special token added later takes the next free id without moving any existing one.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from hybrid_vlm.remote_code import write_text_atomic
from hybrid_vlm.tiny_tokenizer import SPECIAL_TOKENS

# 500 learned tokens + 12 special tokens = 512, a friendly embedding size for tiny models.
BPE_VOCAB_SIZE = 500
OUTPUT_DIR = Path(__file__).resolve().parent / "tiny_tokenizer"

# A short English text about pictures and clips, so that the words tests and examples use are single tokens.
CORPUS = """
The quick brown fox jumps over the lazy dog. A cat is sitting on a red mat next to the window.
What is in this image? Describe the image in one sentence. What happens in this video?
The image shows a small dog running on the grass in a green park. There are two people in the picture.
The video shows a man who is walking along the beach at sunset, and the water is blue and calm.
A woman is reading a book under a large tree. The sky is clear and the sun is bright.
How many cats are there in the picture? There are three cats and one dog.
What color is the car? The car is red. The house is white and the door is black.
Please answer the question. The answer is yes. The answer is no. I do not know.
Hello, how are you today? I am fine, thank you. Can you help me with this picture?
Sure, I can help you. This is a photo of a city street with many cars, buses and people.
The first frame shows a bird on a branch, and the last frame shows the bird flying away.
In the second part of the video, the children are playing with a ball in the garden.
Look at the left side of the image. On the right side there is a table with a cup of coffee.
The text in the image says "Welcome". The sign is yellow and the letters are black.
Count the objects: one, two, three, four, five, six, seven, eight, nine, ten.
The numbers are 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 20, 42, 100 and 2024.
You are a helpful assistant. The user asks a question about an image or a video, and the assistant
answers it in a short and clear way. The model looks at the picture and then writes the answer.
This is a test. This is only a test. The weather is nice, the food is good and the room is quiet.
The train arrives at the station at noon. The boat is on the river and the plane is in the sky.
A young girl with a hat is holding a white flower. An old man is sitting on a wooden bench.
What time is it in the clip? It is early in the morning, and the light is soft and warm.
Where is the ball? The ball is under the chair. Why is the dog happy? Because it is playing.
system
user
assistant
The system message comes first, then the user asks and the assistant replies. Hello world!
Describe what you see. Describe the scene in the world of the video, frame by frame.
"""


def build() -> Tokenizer:
    """Train the byte-level BPE on ``CORPUS`` and append the special tokens after the learned vocabulary."""
    tokenizer = Tokenizer(models.BPE())
    # No normalizer and no automatic BOS/EOS: the text round-trips exactly and the chat template decides the layout.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which the assistant-token mask relies on.
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    lines = [line for line in CORPUS.strip().splitlines() if line]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
            for t in SPECIAL_TOKENS
        ]
    )
    return tokenizer


def main() -> None:
    tokenizer = build()
    if tokenizer.get_vocab_size() != BPE_VOCAB_SIZE + len(SPECIAL_TOKENS):
        raise RuntimeError(
            f"expected {BPE_VOCAB_SIZE + len(SPECIAL_TOKENS)} tokens, got {tokenizer.get_vocab_size()}: "
            "the corpus is too short for BPE_VOCAB_SIZE"
        )
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    # Pretty-printed so that a rebuild that changes something gives a readable diff.
    write_text_atomic(OUTPUT_DIR / "tokenizer.json", tokenizer.to_str(pretty=True) + "\n")
    print(f"wrote {OUTPUT_DIR / 'tokenizer.json'} ({tokenizer.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
