"""Fine-tuning: TRL's SFTTrainer unmodified on every tiny preset, PEFT/QLoRA configs, stages, the video collator.

Every trainer run is 2 steps on CPU with tiny presets. Torch runs single-threaded here: for models this small, thread
start-up and contention on a shared CI machine cost far more than they give.
"""

from __future__ import annotations

import copy
import inspect
import math
import re

import numpy as np
import pytest
import torch
import transformers
from packaging.version import Version
from PIL import Image

import hybrid_vlm
from hybrid_vlm.training import (
    VideoSFTCollator,
    apply_overflow_policy,
    count_parameters,
    freeze_for_stage,
    lora_config,
    lora_target_modules,
    qlora_config,
    qlora_skip_modules,
)

datasets = pytest.importorskip("datasets")
peft = pytest.importorskip("peft")
trl = pytest.importorskip("trl")

from trl import SFTConfig, SFTTrainer  # noqa: E402

# Every tiny family; Vamba's where the package has it.
PRESETS = [
    p for p in ("jamba-llava-tiny", "mamba2-llava-tiny", "llava-tiny", "vamba-tiny") if p in hybrid_vlm.list_presets()
]
IS_TRANSFORMERS_5 = Version(transformers.__version__).major >= 5
# TRL refuses assistant-only loss on vision datasets below this transformers version.
TRL_VISION_ASSISTANT_LOSS = Version(transformers.__version__) >= Version("5.18.0.dev0")


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------- data


def random_image(rng: np.random.Generator, height: int = 40, width: int = 50) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def vision_rows(n: int = 4, seed: int = 0) -> list[dict]:
    """TRL's documented vision format: `messages` with bare image blocks, images in an `images` column."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        num_images = 1 + i % 2
        user = [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": f"What is in picture {i}?"}]
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": [{"type": "text", "text": f"Noise, sample {i}."}]},
        ]
        if i % 2:
            messages += [
                {"role": "user", "content": [{"type": "text", "text": "Anything else?"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
            ]
        rows.append({"messages": messages, "images": [random_image(rng, 40 + 8 * k, 50) for k in range(num_images)]})
    return rows


def vision_dataset(n: int = 4):
    return datasets.Dataset.from_list(vision_rows(n))


def sft_args(tmp_path, **overrides) -> SFTConfig:
    args = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    args.update(overrides)
    return SFTConfig(**args)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}


def train_losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def processor_batch(processor, n: int = 2) -> dict:
    rows = vision_rows(n)
    conversations = []
    for row in rows:
        images = iter(row["images"])
        conversation = copy.deepcopy(row["messages"])
        for message in conversation:
            for block in message["content"]:
                if block["type"] == "image":
                    block["image"] = next(images)
        conversations.append(conversation)
    batch = processor.apply_chat_template(
        conversations, tokenize=True, return_dict=True, return_tensors="pt", padding=True, padding_side="right"
    )
    batch = dict(batch)
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    batch["labels"] = labels
    return batch


# --------------------------------------------------------------------------------------------- SFTTrainer, unmodified


@pytest.mark.parametrize("preset", PRESETS)
def test_sft_trainer_trains_every_preset(preset, tmp_path):
    """TRL's defaults (its own vision collator, gradient checkpointing on) train the language model and projector."""
    model, processor = hybrid_vlm.from_preset(preset)
    before = snapshot(model)
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=vision_dataset(), args=sft_args(tmp_path)
    )
    assert type(trainer.data_collator).__name__ == "DataCollatorForVisionLanguageModeling"
    trainer.train()
    losses = train_losses(trainer)
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    moved = changed(model, before)
    assert any(".language_model." in name for name in moved)
    assert any(".multi_modal_projector." in name for name in moved)


def test_sft_trainer_loads_model_and_processor_from_a_folder(tmp_path):
    """A folder path string: TRL loads the model (AutoModelForCausalLM fallback) and AutoProcessor itself."""
    model, processor = hybrid_vlm.from_preset("llava-tiny")
    folder = tmp_path / "checkpoint"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    trainer = SFTTrainer(model=str(folder), train_dataset=vision_dataset(), args=sft_args(tmp_path))
    assert isinstance(trainer.model, hybrid_vlm.HybridVLMForConditionalGeneration)
    assert isinstance(trainer.processing_class, hybrid_vlm.HybridVLMProcessor)
    before = snapshot(trainer.model)
    trainer.train()
    assert all(math.isfinite(loss) for loss in train_losses(trainer))
    assert changed(trainer.model, before)


@pytest.mark.skipif(
    not TRL_VISION_ASSISTANT_LOSS,
    reason="TRL supports assistant_only_loss on vision datasets only with transformers>=5.18 (use VideoSFTCollator)",
)
def test_sft_trainer_assistant_only_loss_labels_exactly_assistant_tokens(tmp_path):
    model, processor = hybrid_vlm.from_preset("llava-tiny")
    dataset = vision_dataset()
    trainer = SFTTrainer(
        model=model,
        processing_class=processor,
        train_dataset=dataset,
        args=sft_args(tmp_path, assistant_only_loss=True),
    )
    batch = trainer.data_collator([dataset[0], dataset[1]])
    tokenizer = processor.tokenizer
    expected = ["Noise, sample 0.<|im_end|>", "Noise, sample 1.<|im_end|>No.<|im_end|>"]
    for row, labels, text in zip(batch["input_ids"], batch["labels"], expected):
        kept = labels != -100
        assert torch.equal(row[kept], labels[kept])
        assert tokenizer.decode(labels[kept]) == text
        assert int(kept.sum()) == len(tokenizer(text, add_special_tokens=False)["input_ids"])
    trainer.train()
    assert all(math.isfinite(loss) for loss in train_losses(trainer))


def test_jamba_router_aux_loss_flows(tmp_path):
    model, processor = hybrid_vlm.from_preset("jamba-llava-tiny", text_config={"output_router_logits": True})
    batch = processor_batch(processor)
    model.train()
    out = model(**batch, use_cache=False)
    assert out.aux_loss is not None and out.aux_loss.requires_grad
    router = next(m for name, m in model.named_modules() if name.endswith("feed_forward.router"))
    (grad,) = torch.autograd.grad(out.aux_loss, router.weight)
    assert grad.abs().sum() > 0
    coef = model.config.text_config.router_aux_loss_coef
    lm_only = model(**batch, use_cache=False, output_router_logits=False).loss
    torch.testing.assert_close(out.loss, lm_only + coef * out.aux_loss)

    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=vision_dataset(), args=sft_args(tmp_path)
    )
    trainer.train()
    aux = [entry["aux_loss"] for entry in trainer.state.log_history if "aux_loss" in entry]
    assert len(aux) == 2 and all(math.isfinite(value) and value > 0 for value in aux)


def test_jamba_generates_with_router_logits_on(tmp_path):
    """TRL turns `output_router_logits` on in the text config and saves it; generation must still work (the aux loss
    of a decode step covers that step's tokens, not the whole attention mask)."""
    model, processor = hybrid_vlm.from_preset("jamba-llava-tiny", text_config={"output_router_logits": True})
    rows = vision_rows(2)
    conversations = []
    for row in rows:
        images = iter(row["images"])
        user = copy.deepcopy(row["messages"][0])
        for block in user["content"]:
            if block["type"] == "image":
                block["image"] = next(images)
        conversations.append([user])
    inputs = processor.apply_chat_template(
        conversations, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt", padding=True
    )
    output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape == (2, inputs["input_ids"].shape[1] + 3)


def test_trl_truncation_through_images_fails_early_and_says_what_to_do(tmp_path):
    """TRL's collator passes truncation/max_length to the processor, which refuses to cut image tokens."""
    model, processor = hybrid_vlm.from_preset("llava-tiny")
    dataset = vision_dataset()
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=dataset, args=sft_args(tmp_path, max_length=8)
    )
    with pytest.raises(
        ValueError, match=r"max_length=8 would cut visual tokens of sample 0.*needs \d+ tokens\. Raise max_length"
    ):
        trainer.data_collator([dataset[0], dataset[1]])


def test_projector_stage_with_sft_trainer_moves_only_the_projector(tmp_path):
    model, processor = hybrid_vlm.from_preset("llava-tiny")
    freeze_for_stage(model, "projector")
    before = snapshot(model)
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=vision_dataset(), args=sft_args(tmp_path)
    )
    trainer.train()
    moved = changed(model, before)
    assert moved and all(name.startswith("model.multi_modal_projector.") for name in moved)


# --------------------------------------------------------------------------------------------- LoRA / QLoRA


def ssm_mixer_names(model) -> list[str]:
    return [name for name, m in model.named_modules() if "A_log" in dict(m.named_parameters(recurse=False))]


@pytest.mark.parametrize("preset", PRESETS)
def test_lora_targets_only_safe_language_model_linears(preset):
    model, _ = hybrid_vlm.from_preset(preset)
    targets = lora_target_modules(model)
    assert targets and all(name.startswith("model.language_model.") for name in targets)
    mixers = ssm_mixer_names(model)
    for name in targets:
        assert isinstance(model.get_submodule(name), torch.nn.Linear)
        assert ".experts" not in name and not name.endswith("router")
        mixer = next((m for m in mixers if name.startswith(m + ".")), None)
        if mixer is not None:
            assert name.rsplit(".", 1)[1] in {"in_proj", "x_proj"}, name
    assert all(not name.startswith("model.multi_modal_projector.") for name in targets)
    with_projector = lora_target_modules(model, include_projector=True)
    assert {n for n in with_projector if n.startswith("model.multi_modal_projector.")} == {
        "model.multi_modal_projector.linear_1",
        "model.multi_modal_projector.linear_2",
    }

    peft_model = peft.get_peft_model(model, lora_config(model, include_projector=True))
    wrapped = {
        name.removeprefix("base_model.model.").removesuffix(".lora_A")
        for name, _ in peft_model.named_modules()
        if name.endswith(".lora_A")
    }
    assert wrapped == set(with_projector)
    for name in wrapped:
        assert not name.startswith("model.vision_tower") and not name.startswith("lm_head")
        assert not re.search(r"\.(out_proj|conv1d|dt_proj)$", name) or not any(name.startswith(m + ".") for m in mixers)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_lora_parameter_gets_a_gradient_and_merge_and_reload_agree(preset, tmp_path):
    model, processor = hybrid_vlm.from_preset(preset)
    base_state = copy.deepcopy(model.state_dict())
    peft_model = peft.get_peft_model(model, lora_config(model, dropout=0.0, include_projector=True))
    torch.manual_seed(1)
    with torch.no_grad():  # B starts at zero (no gradient reaches A); give it values so every factor matters
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
    batch = processor_batch(processor)

    peft_model.train()
    peft_model(**batch, use_cache=False).loss.backward()
    lora = {name: p for name, p in peft_model.named_parameters() if "lora_" in name}
    assert lora
    no_grad = sorted(name for name, p in lora.items() if p.grad is None or not bool(p.grad.abs().sum() > 0))
    assert not no_grad, f"LoRA parameters without gradient (adapter never applied): {no_grad}"

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(**inputs, use_cache=False).logits
    peft_model.save_pretrained(tmp_path / "adapter")

    fresh, _ = hybrid_vlm.from_preset(preset)
    fresh.load_state_dict(base_state)
    with torch.no_grad():
        plain = fresh(**inputs, use_cache=False).logits
    assert not torch.allclose(plain, adapted, atol=1e-4)  # the adapter does something
    reloaded = peft.PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs, use_cache=False).logits, adapted, atol=1e-5, rtol=1e-5)

    merged = peft_model.merge_and_unload().eval()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs, use_cache=False).logits, adapted, atol=1e-4, rtol=1e-4)


def test_sft_trainer_with_lora_trains_only_the_adapter(tmp_path):
    model, processor = hybrid_vlm.from_preset("jamba-llava-tiny")
    config = lora_config(model)
    trainer = SFTTrainer(
        model=model,
        processing_class=processor,
        train_dataset=vision_dataset(),
        args=sft_args(tmp_path),
        peft_config=config,
    )
    before = snapshot(trainer.model)
    trainer.train()
    moved = changed(trainer.model, before)
    assert moved and all("lora_" in name for name in moved)
    assert all(math.isfinite(loss) for loss in train_losses(trainer))


def test_lora_config_refuses_its_own_fields():
    model, _ = hybrid_vlm.from_preset("llava-tiny")
    with pytest.raises(TypeError, match="target_modules"):
        lora_config(model, target_modules="all-linear")
    config = lora_config(model, r=4, alpha=8, dropout=0.0, modules_to_save=["multi_modal_projector"])
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.0)
    assert config.modules_to_save == ["multi_modal_projector"]


def _bnb_would_convert(name: str, skip: list[str]) -> bool:
    """Whether transformers' bitsandbytes integration would quantise the Linear `name`, by this line's rule."""
    if IS_TRANSFORMERS_5:
        from transformers.quantizers.quantizers_utils import should_convert_module

        return should_convert_module(name, skip)
    # transformers 4.57 integrations/bitsandbytes.py: skip when `key + "."` is in the name or the name equals a key.
    return not any((key + ".") in name or key == name for key in skip)


@pytest.mark.parametrize("preset", PRESETS)
def test_qlora_keeps_ssm_vision_projector_and_head_unquantised(preset):
    model, _ = hybrid_vlm.from_preset(preset)
    skip = qlora_skip_modules(model)
    assert skip == qlora_skip_modules(model.config)  # from the config alone (meta device), before loading
    mixers = ssm_mixer_names(model)
    linears = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    keep = ("model.vision_tower.", "model.multi_modal_projector.", "lm_head")
    for name in linears:
        unquantised = name.startswith(keep) or any(name.startswith(m + ".") for m in mixers)
        assert _bnb_would_convert(name, skip) != unquantised, name
    if preset == "llava-tiny":
        assert any(_bnb_would_convert(name, skip) for name in linears)


@pytest.mark.skipif(
    not IS_TRANSFORMERS_5, reason="transformers 4.57's BitsAndBytesConfig reads bitsandbytes' version when built"
)
def test_qlora_config_fields():
    model, _ = hybrid_vlm.from_preset("jamba-llava-tiny")
    config = qlora_config(model, llm_int8_skip_modules=["extra"])
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert config.llm_int8_skip_modules == [*qlora_skip_modules(model), "extra"]


# --------------------------------------------------------------------------------------------- stages


def test_freeze_for_stage_counts():
    model, _ = hybrid_vlm.from_preset("jamba-llava-tiny")

    def size(module) -> int:
        return sum(p.numel() for p in module.parameters())

    projector, vision = size(model.model.multi_modal_projector), size(model.model.vision_tower)
    _, total = count_parameters(model)
    assert freeze_for_stage(model, "projector") == projector
    assert not any(p.requires_grad for p in model.model.language_model.parameters())
    assert freeze_for_stage(model, "projector+lm") == total - vision
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert model.lm_head.weight.requires_grad
    assert freeze_for_stage(model, "full") == total
    assert count_parameters(model) == (total, total)
    with pytest.raises(ValueError, match="Unknown training stage 'llm'"):
        freeze_for_stage(model, "llm")
    with pytest.raises(ValueError, match="has none"):
        freeze_for_stage(model, "new-layers")
    peft_model = peft.get_peft_model(model, lora_config(model))
    with pytest.raises(ValueError, match="PEFT model"):
        freeze_for_stage(peft_model, "projector")


@pytest.mark.skipif("vamba-tiny" not in hybrid_vlm.list_presets(), reason="no Vamba preset in this build")
def test_new_layers_stage_trains_only_vambas_added_layers(tmp_path):
    """Vamba stage 1: cross-attention, alpha and the visual SSM train; the pretrained LM, tower, projector do not."""
    model, processor = hybrid_vlm.from_preset("vamba-tiny")
    trainable = freeze_for_stage(model, "new-layers")
    added = re.compile(r"\.layers\.\d+\.(cross_attn|vision_mixer)\.|\.layers\.\d+\.alpha$")
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if added.search(n))
    before = snapshot(model)
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=vision_dataset(), args=sft_args(tmp_path)
    )
    trainer.train()
    moved = changed(model, before)
    assert moved and all(added.search(name) for name in moved)
    assert any(".cross_attn." in name for name in moved) and any(".vision_mixer." in name for name in moved)


# --------------------------------------------------------------------------------------------- collator


def test_collator_matches_trl_on_images_and_masks_visual_tokens(tmp_path):
    model, processor = hybrid_vlm.from_preset("llava-tiny")
    dataset = vision_dataset()
    trl_collator = SFTTrainer(
        model=model, processing_class=processor, train_dataset=dataset, args=sft_args(tmp_path, max_length=None)
    ).data_collator
    examples = [dataset[0], dataset[1]]
    ours = VideoSFTCollator(processor)([dict(e) for e in examples])
    theirs = trl_collator([dict(e) for e in examples])
    for key in ("input_ids", "attention_mask", "pixel_values"):
        torch.testing.assert_close(ours[key], theirs[key])
    visual = ours["input_ids"] == processor.image_token_id
    assert visual.any() and (ours["labels"][visual] == -100).all()
    torch.testing.assert_close(ours["labels"][~visual], theirs["labels"][~visual])


def test_collator_assistant_only_loss_on_both_lines():
    _, processor = hybrid_vlm.from_preset("llava-tiny")
    rows = vision_rows(2)
    batch = VideoSFTCollator(processor, assistant_only_loss=True)(rows)
    texts = [processor.tokenizer.decode(labels[labels != -100]) for labels in batch["labels"]]
    assert texts == ["Noise, sample 0.<|im_end|>", "Noise, sample 1.<|im_end|>No.<|im_end|>"]
    assert "assistant_masks" not in batch


def test_collator_string_content_and_inline_media():
    _, processor = hybrid_vlm.from_preset("llava-tiny")
    rng = np.random.default_rng(0)
    image = random_image(rng)
    string_style = {
        "messages": [{"role": "user", "content": "Describe."}, {"role": "assistant", "content": "Noise."}],
        "images": [image],
    }
    inline = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": image, "text": None}, {"type": "text", "text": "Describe."}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Noise."}]},
        ]
    }
    collator = VideoSFTCollator(processor)
    a, b = collator([string_style]), collator([inline])
    torch.testing.assert_close(a["input_ids"], b["input_ids"])
    torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
    with pytest.raises(ValueError, match="Example 0: 0 image block"):
        collator([{**inline, "images": [image]}])


def test_overflow_error_names_sample_and_numbers():
    _, processor = hybrid_vlm.from_preset("llava-tiny")
    rows = vision_rows(2)  # sample 1 has two images and two turns: the longer one
    lengths = VideoSFTCollator(processor)(rows)["attention_mask"].sum(-1).tolist()
    limit = lengths[0]
    assert lengths[1] > limit
    visual = 2 * processor.num_image_tokens(56, 56)
    pattern = (
        rf"Sample 1 of this batch \('What is in picture 1\?'\) needs {lengths[1]} tokens \({lengths[1] - visual} text "
        rf"\+ {visual} visual\) but max_length={limit}.*overflow='drop'"
    )
    with pytest.raises(ValueError, match=pattern):
        VideoSFTCollator(processor, max_length=limit)(rows)


def test_overflow_drop_drops_whole_samples_and_logs(caplog):
    _, processor = hybrid_vlm.from_preset("llava-tiny")
    rows = vision_rows(4)
    full = VideoSFTCollator(processor)(rows)
    limit = int(full["attention_mask"].sum(-1)[0])
    collator = VideoSFTCollator(processor, max_length=limit, overflow="drop")
    with caplog.at_level("WARNING", logger="hybrid_vlm.training"):
        batch = collator(rows)
    expected = VideoSFTCollator(processor)([rows[0], rows[2]])
    for key in ("input_ids", "labels", "pixel_values"):
        torch.testing.assert_close(batch[key], expected[key])
    assert collator.num_dropped == 2 and "dropped 2 of 4 sample(s)" in caplog.text
    with pytest.raises(ValueError, match="Every sample of this batch"):
        VideoSFTCollator(processor, max_length=4, overflow="drop")(rows)


def test_overflow_truncate_cuts_only_text_after_the_visual_tokens():
    _, processor = hybrid_vlm.from_preset("llava-tiny")
    rows = vision_rows(1)
    full = VideoSFTCollator(processor)(rows)
    ids = full["input_ids"][0]
    last_visual = int((ids == processor.image_token_id).nonzero().max()) + 1
    batch = VideoSFTCollator(processor, max_length=last_visual + 2, overflow="truncate")(rows)
    assert batch["input_ids"].shape[1] == last_visual + 2
    torch.testing.assert_close(batch["input_ids"][0], ids[: last_visual + 2])
    with pytest.raises(ValueError, match="cutting it would remove visual tokens"):
        VideoSFTCollator(processor, max_length=last_visual - 1, overflow="truncate")(rows)


def test_apply_overflow_policy_directly():
    assert apply_overflow_policy([5, 9, 3], [2, 4, 0], None) == [0, 1, 2]
    assert apply_overflow_policy([5, 9, 3], [2, 4, 0], 6, "drop") == [0, 2]
    assert apply_overflow_policy([5, 9, 3], [2, 4, 0], 6, "truncate", visual_end=[3, 5, 0]) == [0, 1, 2]
    with pytest.raises(
        ValueError, match=r"Sample 1 of this batch needs 9 tokens \(5 text \+ 4 visual\) but max_length=6"
    ):
        apply_overflow_policy([5, 9, 3], [2, 4, 0], 6)
    with pytest.raises(ValueError, match="overflow must be one of"):
        apply_overflow_policy([1], [0], 6, "cut")


def test_collator_with_sft_trainer(tmp_path):
    """The documented recipe for the collator: skip TRL's preparation, keep the raw columns."""
    model, processor = hybrid_vlm.from_preset("mamba2-llava-tiny")
    before = snapshot(model)
    args = sft_args(tmp_path, remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    collator = VideoSFTCollator(processor, max_length=64, overflow="drop", assistant_only_loss=True)
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=vision_dataset(), args=args, data_collator=collator
    )
    trainer.train()
    assert all(math.isfinite(loss) for loss in train_losses(trainer))
    assert changed(model, before)


def _processor_supports_videos(processor) -> bool:
    return getattr(processor, "video_processor", None) is not None


def _model_supports_videos() -> bool:
    return "pixel_values_videos" in inspect.signature(hybrid_vlm.HybridVLMModel.forward).parameters


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """An 8-frame clip of noise (mpeg4 in mp4; PyAV writes it)."""
    av = pytest.importorskip("av")
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for _ in range(8):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return str(path)


def video_example(path: str, answer: str = "Noise.") -> dict:
    return {
        "messages": [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        ],
        "videos": [path],
    }


def test_collator_video_blocks(video_file):
    """Video content blocks go through the processor's apply_chat_template, mixed with image samples."""
    _, processor = hybrid_vlm.from_preset("llava-tiny")
    if not _processor_supports_videos(processor):
        pytest.skip("HybridVLMProcessor has no video processor yet")
    batch = VideoSFTCollator(processor, assistant_only_loss=True)([video_example(video_file), vision_rows(1)[0]])
    assert "pixel_values_videos" in batch and "pixel_values" in batch
    video_id = processor.tokenizer.convert_tokens_to_ids("<video>")
    visual = (batch["input_ids"] == video_id) | (batch["input_ids"] == processor.image_token_id)
    assert (batch["input_ids"][0] == video_id).any() and (batch["labels"][visual] == -100).all()
    replies = [processor.tokenizer.decode(labels[labels != -100]) for labels in batch["labels"]]
    assert replies == ["Noise.<|im_end|>", "Noise, sample 0.<|im_end|>"]


def test_sft_trainer_on_videos_with_the_collator(video_file, tmp_path):
    """The documented video recipe: SFTTrainer + VideoSFTCollator; the projector only moves if frames reach it."""
    model, processor = hybrid_vlm.from_preset("mamba2-llava-tiny")
    if not (_processor_supports_videos(processor) and _model_supports_videos()):
        pytest.skip("the processor or the model does not take videos yet")
    dataset = datasets.Dataset.from_list([video_example(video_file, f"Noise {i}.") for i in range(4)])
    before = snapshot(model)
    args = sft_args(tmp_path, remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    collator = VideoSFTCollator(processor, max_length=512, assistant_only_loss=True)
    trainer = SFTTrainer(
        model=model, processing_class=processor, train_dataset=dataset, args=args, data_collator=collator
    )
    trainer.train()
    assert all(math.isfinite(loss) for loss in train_losses(trainer))
    assert any(name.startswith("model.multi_modal_projector.") for name in changed(model, before))


def test_topk_distillation_loss_on_a_hand_made_example():
    import math

    from hybrid_vlm.training import topk_distillation_loss

    teacher = torch.tensor([[[2.0, 0.0, -5.0]]])
    student = torch.tensor([[[0.0, 0.0, 9.0]]])
    # k=2 keeps vocabulary entries 0 and 1: teacher softmax(2, 0), student softmax(0, 0) = (1/2, 1/2)
    p0 = math.exp(2) / (math.exp(2) + 1)
    expected = p0 * math.log(p0 / 0.5) + (1 - p0) * math.log((1 - p0) / 0.5)
    assert topk_distillation_loss(student, teacher, k=2).item() == pytest.approx(expected, rel=1e-6)
    assert topk_distillation_loss(teacher, teacher, k=3).item() == pytest.approx(0.0, abs=1e-7)
    masked = topk_distillation_loss(torch.cat([student, teacher], 1), torch.cat([teacher, teacher], 1), k=2,
                                    mask=torch.tensor([[0, 1]]))
    assert masked.item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="k must be in 1..3"):
        topk_distillation_loss(student, teacher, k=5)


def test_causal_lm_loss_equals_the_models_own_loss():
    """`compute_loss_func=causal_lm_loss` (for FSDP2) trains on the loss the model computes from `labels` itself."""
    from hybrid_vlm.training import causal_lm_loss

    model, processor = hybrid_vlm.from_preset("llava-tiny")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    inputs = processor(text=["<image>What is it?", "<image>Noise."], images=[image, image], padding=True,
                       return_tensors="pt")
    labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
    outputs = model(**inputs)
    expected = model(**inputs, labels=labels).loss
    torch.testing.assert_close(causal_lm_loss(outputs, labels), expected)
    total = int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(causal_lm_loss(outputs, labels, num_items_in_batch=2 * total), expected / 2)
    assert causal_lm_loss(outputs, labels).requires_grad
