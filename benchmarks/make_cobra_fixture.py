"""Build the Cobra parity fixture with the unmodified reference code (h-zhao1997/cobra).

Runs in its own environment, not the project's: the reference needs timm 0.9.10, transformers 4.34.1 and torchvision
(`python -m venv V && V/bin/pip install torch torchvision timm==0.9.10 transformers==4.34.1 einops draccus rich
jsonlines`). It takes paths to checkouts of the reference and of the two kernel packages whose Python it imports:

    V/bin/python benchmarks/make_cobra_fixture.py --cobra COBRA --mamba MAMBA_V1_2_2 \
        --causal-conv1d CAUSAL_CONV1D_V1_2_0_POST2 --out tests/fixtures/cobra

What it does:
- `mamba_ssm` and `causal_conv1d` need CUDA. Their compiled extensions are replaced by empty modules so that their
  Python imports, and every kernel the reference imports is replaced by that release's own pure-PyTorch reference
  function: `selective_scan_fn` -> `selective_scan_ref`, `mamba_inner_fn` -> `mamba_inner_ref`, `causal_conv1d_fn`
  -> `causal_conv1d_ref`, `causal_conv1d_update` -> `causal_conv1d_update_ref`, `selective_state_update` ->
  `selective_state_update_ref`, and the fused add + RMSNorm / LayerNorm (`rms_norm_fn`, `layer_norm_fn`) ->
  `rms_norm_ref` / `layer_norm_ref`. Nothing in the reference checkout is changed.
- Two tiny timm ViTs are registered with the architecture flags of the real towers (DINOv2 ViT-L/14 with 4 registers:
  layer scale, `no_embed_class`; SigLIP so400m/14: no class token, attention-pool head) and their pretrained configs
  (mean/std, interpolation, crop_pct); their "pretrained" weights are random files loaded by timm's own
  `pretrained=True` path (DINOv2's 7x7 position grid is resampled by timm to the run's 5x5 grid, as 37x37 -> 27x27).
- The reference's registries get one new vision backbone id (`dinosiglip-vit-so-76px`: those two timm models at
  76 px, a size that, like 384, is not a multiple of 14) and the LM id `mamba-2.8b-zephyr` points at a local folder
  with a tiny Mamba config and a small GPT-NeoX-style tokenizer.
- The model is built with the reference's factories (`get_vision_backbone_and_transform`,
  `get_llm_backbone_and_tokenizer`, `get_vlm` with Cobra-3B's `no-align+fused-gelu-mlp` and `resize-naive`), every
  parameter is randomised, and the run is saved as the training strategy saves it (`config.json` with a `model`
  section, `checkpoints/latest-checkpoint.pt` = `{"model": {"projector": ..., "llm_backbone": ...}}`).
- The run is then loaded back with `cobra.load(run_dir)` and each case goes through the reference's inference path:
  the prompt builder, `tokenizer(prompt, truncation=True)`, `vision_backbone.image_transform`, `CobraVLM.forward`.
- The transformers-format tower folders that `hybrid-vlm convert --from cobra --vision-towers` reads are written from
  the same timm weights (DINOv2-with-registers and SigLIP vision names, native position grids).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import types
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DINO_TIMM = "vit_tiny_patch14_reg4_dinov2"
SIGLIP_TIMM = "vit_tiny_patch14_siglip_76"
BACKBONE_ID = "dinosiglip-vit-so-76px"
IMAGE_SIZE = 76
DINO_NATIVE = 98  # 7x7 patches, resampled by timm to the run's 5x5 (as 518 -> 384 for the real tower)
DINO = {"embed_dim": 32, "depth": 3, "num_heads": 2}
SIGLIP = {"embed_dim": 48, "depth": 3, "num_heads": 3, "mlp_ratio": 3.7362}
MAMBA = {"d_model": 64, "n_layer": 3}


# ----------------------------------------------------------------------------------------------- kernel stand-ins
def install_kernel_stand_ins(mamba: Path, causal_conv1d: Path) -> None:
    """Import the real mamba_ssm / causal_conv1d Python, with each CUDA/Triton kernel replaced by its reference."""
    for path in (mamba, causal_conv1d):
        sys.path.insert(0, str(path))
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        sys.modules[name] = types.ModuleType(name)  # compiled extensions: never called below
    import causal_conv1d
    import causal_conv1d.causal_conv1d_interface as conv_ref

    causal_conv1d.causal_conv1d_fn = conv_ref.causal_conv1d_ref
    causal_conv1d.causal_conv1d_update = conv_ref.causal_conv1d_update_ref

    import mamba_ssm.ops.selective_scan_interface as scan
    import mamba_ssm.ops.triton.layernorm as norm
    import mamba_ssm.ops.triton.selective_state_update as state_update

    def rms_norm_fn(x, weight, bias, residual=None, prenorm=False, residual_in_fp32=False, eps=1e-6):
        out = norm.rms_norm_ref(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)
        if prenorm and residual_in_fp32:
            return out[0], out[1].float()
        return out

    def layer_norm_fn(x, weight, bias, residual=None, eps=1e-6, prenorm=False, residual_in_fp32=False,
                      is_rms_norm=False):
        reference = norm.rms_norm_ref if is_rms_norm else norm.layer_norm_ref
        out = reference(x, weight, bias, residual=residual, eps=eps, prenorm=prenorm, upcast=True)
        if prenorm and residual_in_fp32:
            return out[0], out[1].float()
        return out

    stand_ins = {
        "selective_scan_fn": scan.selective_scan_ref,
        "mamba_inner_fn": scan.mamba_inner_ref,
        "causal_conv1d_fn": conv_ref.causal_conv1d_ref,
        "causal_conv1d_update": conv_ref.causal_conv1d_update_ref,
        "selective_state_update": state_update.selective_state_update_ref,
        "rms_norm_fn": rms_norm_fn,
        "layer_norm_fn": layer_norm_fn,
    }
    import mamba_ssm.models.mixer_seq_simple  # noqa: F401
    import mamba_ssm.modules.mamba_simple  # noqa: F401
    import mamba_ssm.utils.generation  # noqa: F401

    for module_name, module in list(sys.modules.items()):
        if module_name.split(".")[0] in ("mamba_ssm", "causal_conv1d"):
            for attr, fn in stand_ins.items():
                if attr in vars(module) and not (module is scan and attr.endswith("_ref")):
                    setattr(module, attr, fn)


# ----------------------------------------------------------------------------------------------- tiny timm towers
def register_tiny_towers(weights: Path) -> None:
    """Tiny timm ViTs with the real towers' flags and pretrained configs, loaded from local weight files."""
    import timm.models.vision_transformer as vit
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models._registry import generate_default_cfgs, register_model

    module = types.ModuleType("cobra_fixture_towers")
    module.default_cfgs = generate_default_cfgs({
        f"{DINO_TIMM}.fixture": vit._cfg(file=str(weights / "dino.pth"), mean=IMAGENET_DEFAULT_MEAN,
                                         std=IMAGENET_DEFAULT_STD, num_classes=0,
                                         input_size=(3, DINO_NATIVE, DINO_NATIVE), crop_pct=1.0),
        f"{SIGLIP_TIMM}.fixture": vit._cfg(file=str(weights / "siglip.pth"), input_size=(3, IMAGE_SIZE, IMAGE_SIZE),
                                           num_classes=0),
    })
    sys.modules[module.__name__] = module

    def dino(pretrained=False, **kwargs):
        args = dict(patch_size=14, init_values=1e-5, reg_tokens=4, no_embed_class=True, img_size=DINO_NATIVE, **DINO)
        return vit._create_vision_transformer(DINO_TIMM, pretrained=pretrained, **dict(args, **kwargs))

    def siglip(pretrained=False, **kwargs):
        args = dict(patch_size=14, class_token=False, global_pool="map", img_size=IMAGE_SIZE, **SIGLIP)
        return vit._create_vision_transformer(SIGLIP_TIMM, pretrained=pretrained, **dict(args, **kwargs))

    for name, fn in ((DINO_TIMM, dino), (SIGLIP_TIMM, siglip)):
        fn.__name__, fn.__module__ = name, module.__name__
        register_model(fn)


def randomise_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Every parameter random and non-trivial: norm weights 1 +- 0.3, biases and scales nonzero."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            shape = param.shape
            if "norm" in name and leaf == "weight":
                value = 1 + 0.3 * (2 * torch.rand(shape, generator=generator) - 1)
            elif leaf == "gamma":  # timm LayerScale: the real DINOv2's are learned, far from the 1e-5 init
                value = 0.2 + 0.8 * torch.rand(shape, generator=generator)
            elif leaf == "A_log":
                d_state = shape[-1]
                value = torch.log(torch.arange(1, d_state + 1).float()).expand(shape).clone()
                value += 0.2 * torch.randn(shape, generator=generator)
            elif leaf == "D":
                value = 1 + 0.3 * torch.randn(shape, generator=generator)
            elif name.endswith("dt_proj.bias"):
                log_dt = torch.rand(shape, generator=generator) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
                dt = torch.exp(log_dt)
                value = dt + torch.log(-torch.expm1(-dt))
            elif leaf == "bias":
                value = 0.1 * torch.randn(shape, generator=generator)
            elif param.dim() >= 2:
                fan_in = param[0].numel()
                value = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
            else:  # embeddings-like vectors (cls / register tokens, position embeddings)
                value = 0.5 * torch.randn(shape, generator=generator)
            if leaf in ("pos_embed", "cls_token", "reg_token", "latent"):
                value = 0.5 * torch.randn(shape, generator=generator)
            if name.endswith("embedding.weight"):
                value = torch.randn(shape, generator=generator)
            param.copy_(value)


def make_tower_weights(weights: Path, generator: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    import timm

    weights.mkdir(parents=True, exist_ok=True)
    states = {}
    for key, name in (("dino", DINO_TIMM), ("siglip", SIGLIP_TIMM)):
        model = timm.create_model(name, pretrained=False, num_classes=0)
        randomise_(model, generator)
        states[key] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(states[key], weights / f"{key}.pth")
    return states


# ----------------------------------------------------------------------------------------------- HF tower folders
def _save_hf(folder: Path, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


def _split_qkv(prefix: str, qkv_w: torch.Tensor, qkv_b: torch.Tensor, names: tuple[str, str, str], out: dict) -> None:
    for name, w, b in zip(names, qkv_w.chunk(3), qkv_b.chunk(3)):
        out[f"{prefix}{name}.weight"], out[f"{prefix}{name}.bias"] = w, b


def write_hf_dino(state: dict[str, torch.Tensor], folder: Path, generator: torch.Generator) -> None:
    """DINOv2-with-registers in transformers' names (what facebook/dinov2-with-registers-* hold)."""
    dim, depth = DINO["embed_dim"], DINO["depth"]
    # The original checkpoint keeps a position for the class token; timm folded it into cls_token. Any split works.
    cls_pos = 0.5 * torch.randn(1, 1, dim, generator=generator)
    out = {
        "embeddings.cls_token": state["cls_token"] - cls_pos,
        "embeddings.mask_token": torch.zeros(1, dim),
        "embeddings.register_tokens": state["reg_token"],
        "embeddings.position_embeddings": torch.cat([cls_pos, state["pos_embed"]], dim=1),
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"],
    }
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        _split_qkv(dst + "attention.attention.", state[src + "attn.qkv.weight"], state[src + "attn.qkv.bias"],
                   ("query", "key", "value"), out)
        pairs = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.fc1",
                 "mlp.fc2": "mlp.fc2"}
        for a, b in pairs.items():
            out[f"{dst}{b}.weight"], out[f"{dst}{b}.bias"] = state[f"{src}{a}.weight"], state[f"{src}{a}.bias"]
        out[dst + "layer_scale1.lambda1"] = state[src + "ls1.gamma"]
        out[dst + "layer_scale2.lambda1"] = state[src + "ls2.gamma"]
    config = {
        "architectures": ["Dinov2WithRegistersModel"], "model_type": "dinov2_with_registers",
        "hidden_size": dim, "num_hidden_layers": depth, "num_attention_heads": DINO["num_heads"], "mlp_ratio": 4,
        "hidden_act": "gelu", "layer_norm_eps": 1e-6, "image_size": DINO_NATIVE, "patch_size": 14,
        "num_channels": 3, "qkv_bias": True, "layerscale_value": 1.0, "drop_path_rate": 0.0,
        "use_swiglu_ffn": False, "num_register_tokens": 4, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
    }
    _save_hf(folder, config, out)


def write_hf_siglip(state: dict[str, torch.Tensor], folder: Path) -> None:
    """SigLIP's vision tower in transformers' names (the vision half of google/siglip-so400m-patch14-384)."""
    dim, depth = SIGLIP["embed_dim"], SIGLIP["depth"]
    p = "vision_model."
    out = {
        p + "embeddings.patch_embedding.weight": state["patch_embed.proj.weight"],
        p + "embeddings.patch_embedding.bias": state["patch_embed.proj.bias"],
        p + "embeddings.position_embedding.weight": state["pos_embed"][0],
        p + "post_layernorm.weight": state["norm.weight"], p + "post_layernorm.bias": state["norm.bias"],
        p + "head.probe": state["attn_pool.latent"],
        p + "head.attention.in_proj_weight": torch.cat([state["attn_pool.q.weight"], state["attn_pool.kv.weight"]]),
        p + "head.attention.in_proj_bias": torch.cat([state["attn_pool.q.bias"], state["attn_pool.kv.bias"]]),
        p + "head.attention.out_proj.weight": state["attn_pool.proj.weight"],
        p + "head.attention.out_proj.bias": state["attn_pool.proj.bias"],
        p + "head.layernorm.weight": state["attn_pool.norm.weight"],
        p + "head.layernorm.bias": state["attn_pool.norm.bias"],
        **{f"{p}head.mlp.{fc}.{kind}": state[f"attn_pool.mlp.{fc}.{kind}"]
           for fc in ("fc1", "fc2") for kind in ("weight", "bias")},
    }
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"{p}encoder.layers.{i}."
        _split_qkv(dst + "self_attn.", state[src + "attn.qkv.weight"], state[src + "attn.qkv.bias"],
                   ("q_proj", "k_proj", "v_proj"), out)
        pairs = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
                 "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
        for a, b in pairs.items():
            out[f"{dst}{b}.weight"], out[f"{dst}{b}.bias"] = state[f"{src}{a}.weight"], state[f"{src}{a}.bias"]
    config = {
        "architectures": ["SiglipVisionModel"], "model_type": "siglip_vision_model",
        "hidden_size": dim, "intermediate_size": int(dim * SIGLIP["mlp_ratio"]), "num_hidden_layers": depth,
        "num_attention_heads": SIGLIP["num_heads"], "num_channels": 3, "image_size": IMAGE_SIZE, "patch_size": 14,
        "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6, "attention_dropout": 0.0,
    }
    _save_hf(folder, config, out)


# ----------------------------------------------------------------------------------------------- tokenizer + LM
def build_tokenizer(folder: Path) -> None:
    """A small byte-level BPE in GPT-NeoX's format (<|endoftext|> = 0, <|padding|> = 1; no BOS added)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import GPTNeoXTokenizerFast

    words = ["True", "False", "Yes", "No", "What", "is", "in", "the", "image", "picture", "Describe", "colour",
             "user", "assistant", "How", "many", "shapes", "are", "there", "this", "a", "of", "and", "it", "Out",
             "Answer", "briefly", "left", "right", "red", "blue", "green", "sky", "cat", "dog", "<|", "|>"]
    corpus = [" ".join(words)] * 40 + [w for w in words for _ in range(30)]
    corpus += ["<|user|>\nWhat is in the image?<|endoftext|>\n<|assistant|>\n"] * 20
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=397, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    fast = GPTNeoXTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                unk_token="<|endoftext|>", add_prefix_space=False)
    fast.save_pretrained(folder)


def write_lm_folder(folder: Path) -> None:
    from transformers import AutoTokenizer

    build_tokenizer(folder)
    vocab = len(AutoTokenizer.from_pretrained(folder))
    config = {"model_type": "mamba", "d_model": MAMBA["d_model"], "n_layer": MAMBA["n_layer"], "vocab_size": vocab,
              "ssm_cfg": {}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
              "pad_vocab_size_multiple": 8}
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")


# ----------------------------------------------------------------------------------------------- inputs
def synthetic_image(height: int, width: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 7 + seed), 128 + 100 * np.cos(y / 5), 128 + 60 * np.sin((x + y) / 9)], -1)
    noise = rng.normal(0, 12, size=base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


CASES = {
    "text": {"image": None, "turns": [("human", "What is the colour of the sky? Answer briefly.")]},
    "image": {"image": (64, 64, 1), "turns": [("human", "<image>\nWhat is in the image?")]},
    "image_wide": {"image": (48, 90, 2), "turns": [("human", "Describe this picture.")]},
    "two_turns": {"image": (80, 56, 3), "turns": [("human", "How many shapes are there?"), ("gpt", "There are 3."),
                                                   ("human", "Which is left?")]},
}


def messages_for(turns: list[tuple[str, str]], image_name: str | None) -> list[dict]:
    """The request as chat messages; the image goes with the first user turn (Cobra has one image per sample)."""
    messages = []
    for index, (role, text) in enumerate(turns):
        content = []
        if index == 0 and image_name is not None:
            content.append({"type": "image", "path": image_name})
        content.append({"type": "text", "text": text})
        messages.append({"role": "user" if role == "human" else "assistant", "content": content})
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cobra", type=Path, required=True, help="checkout of h-zhao1997/cobra")
    parser.add_argument("--mamba", type=Path, required=True, help="checkout of state-spaces/mamba at v1.2.2")
    parser.add_argument("--causal-conv1d", type=Path, required=True, help="Dao-AILab/causal-conv1d at v1.2.0.post2")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/cobra_fixture_work"))
    args = parser.parse_args()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1234)

    install_kernel_stand_ins(args.mamba.resolve(), args.causal_conv1d.resolve())
    shutil.rmtree(args.work, ignore_errors=True)
    register_tiny_towers(args.work / "timm")
    tower_states = make_tower_weights(args.work / "timm", generator)
    lm_folder = args.work / "mamba-tiny-zephyr"  # "mamba" in the path: the reference's BOS check is skipped for it
    lm_folder.mkdir(parents=True)
    write_lm_folder(lm_folder)

    sys.path.insert(0, str(args.cobra.resolve()))
    import cobra
    from cobra.conf import DatasetConfig, ModelConfig
    from cobra.models import get_llm_backbone_and_tokenizer, get_vision_backbone_and_transform, get_vlm, materialize
    from cobra.models.backbones.llm import mamba as cobra_mamba
    from cobra.models.backbones.vision import dinosiglip_vit

    dinosiglip_vit.DINOSigLIP_VISION_BACKBONES[BACKBONE_ID] = {"dino": f"{DINO_TIMM}.fixture",
                                                                "siglip": f"{SIGLIP_TIMM}.fixture"}
    materialize.VISION_BACKBONES[BACKBONE_ID] = {"cls": dinosiglip_vit.DinoSigLIPViTBackbone,
                                                 "kwargs": {"default_image_size": IMAGE_SIZE}}
    cobra_mamba.MAMBA_MODELS["mamba-2.8b-zephyr"]["hf_hub_path"] = str(lm_folder)

    model_cfg = ModelConfig.get_choice_class("cobra+3b")()
    model_cfg.model_id, model_cfg.vision_backbone_id = "cobra+tiny", BACKBONE_ID
    vision_backbone, _ = get_vision_backbone_and_transform(model_cfg.vision_backbone_id,
                                                           model_cfg.image_resize_strategy)
    llm_backbone, _ = get_llm_backbone_and_tokenizer(model_cfg.llm_backbone_id, llm_max_length=model_cfg.llm_max_length,
                                                     inference_mode=True)
    vlm = get_vlm(model_cfg.model_id, model_cfg.arch_specifier, vision_backbone, llm_backbone)
    randomise_(vlm.projector, generator)
    randomise_(vlm.llm_backbone, generator)
    vlm.freeze_backbones("finetune")

    # Save exactly as FSDPStrategy.save_checkpoint does (trainable modules only), and config.json as pretrain.py does.
    run_dir = args.out / "cobra-tiny"
    shutil.rmtree(args.out, ignore_errors=True)
    (run_dir / "checkpoints").mkdir(parents=True)
    full = vlm.state_dict()
    model_state_dicts = {key: {} for key in vlm.trainable_module_keys}
    for key, param in full.items():
        for mkey in model_state_dicts:
            if key.startswith(prefix := f"{mkey}."):
                model_state_dicts[mkey][key.removeprefix(prefix)] = param
    torch.save({"model": model_state_dicts}, run_dir / "checkpoints" / "latest-checkpoint.pt")
    dataset_cfg = DatasetConfig.get_choice_class("llava-lvis4v-lrv")()
    jsonable = lambda d: json.loads(json.dumps(d, default=str))  # noqa: E731  (Paths as strings, as yaml writes them)
    run_config = {
        "model": {"type": "cobra+3b", **jsonable(asdict(model_cfg))},
        "dataset": {"type": dataset_cfg.dataset_id, **jsonable(asdict(dataset_cfg))},
        "stage": "finetune", "pretrained_checkpoint": None, "run_id": "cobra+tiny+stage-finetune+x7",
        "run_root_dir": "runs", "seed": 7, "hf_token": ".hf_token", "trackers": ["jsonl", "wandb"],
        "wandb_project": "cobra", "wandb_entity": None,
    }
    (run_dir / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(lm_folder / name, run_dir / name)  # the converter reads the tokenizer from the run folder
    write_hf_dino(tower_states["dino"], args.out / "dinov2", generator)
    write_hf_siglip(tower_states["siglip"], args.out / "siglip")

    # Inference through the reference's own entry points.
    ref = cobra.load(run_dir)
    ref.eval()
    tokenizer, transform = ref.llm_backbone.tokenizer, ref.vision_backbone.image_transform
    num_patches = ref.vision_backbone.num_patches
    from safetensors.torch import save_file

    for case, spec in CASES.items():
        folder = args.out / "cases" / case
        folder.mkdir(parents=True)
        image = image_name = None
        if spec["image"] is not None:
            height, width, seed = spec["image"]
            image, image_name = synthetic_image(height, width, seed), "image.png"
            image.save(folder / image_name)
            image = Image.open(folder / image_name).convert("RGB")  # what a user would load
        builder = ref.get_prompt_builder()
        for role, text in spec["turns"]:
            builder.add_turn(role=role, message=text)
        prompt = builder.get_prompt()
        input_ids = tokenizer(prompt, truncation=True, return_tensors="pt").input_ids
        tensors = {"input_ids": input_ids}
        with torch.no_grad():
            if image is None:
                pixels = None
                logits = ref(input_ids=input_ids, multimodal_indices=torch.zeros(0, dtype=torch.long)).logits
            else:
                pixels = {k: v[None, ...] for k, v in transform(image).items()}
                tensors.update({f"pixel_values_{k}": v for k, v in pixels.items()})
                logits = ref(input_ids=input_ids, pixel_values=pixels).logits
            # Greedy continuation by full forwards (mamba_generate's cached decoding needs CUDA graphs).
            sequence, generated = input_ids, []
            for _ in range(4):
                step = (ref(input_ids=sequence, multimodal_indices=torch.zeros(0, dtype=torch.long)) if pixels is None
                        else ref(input_ids=sequence, pixel_values=pixels)).logits
                token = step[:, -1].argmax(-1, keepdim=True)
                generated.append(int(token))
                sequence = torch.cat([sequence, token], dim=1)
        offset = 0 if image is None else num_patches
        length = logits.shape[1]
        text_positions = list(range(offset, length))
        spread = sorted({text_positions[int(i)] for i in np.linspace(0, len(text_positions) - 1, 6)})
        positions = sorted(set(spread) | {length - 1} | ({offset - 1} if offset else set()))
        tensors["logit_positions"] = torch.tensor(positions)
        tensors["logits"] = logits[0, positions].float().contiguous()
        tensors["generated"] = torch.tensor([generated])
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "reference.safetensors"))
        record = {
            "checkpoint": "cobra-tiny",
            "vision_towers": ["dinov2", "siglip"],
            "convert_from": "cobra",
            "reference_call": {"prompt_builder": [list(t) for t in spec["turns"]], "image": image_name},
            "reference_prompt": prompt,
            "messages": messages_for(spec["turns"], image_name),
            "input_ids": input_ids[0].tolist(),
            "num_image_patches": offset,
            "sequence_length": length,
            "logit_positions": positions,
            "reference_vocab_size": logits.shape[-1],
            "greedy_continuation": generated,
            "pixel_values_shape": None if pixels is None else list(pixels["dino"].shape),
            "tolerance": {"logits": 1e-3, "pixels": 1e-5},
        }
        (folder / "case.json").write_text(json.dumps(record, indent=2) + "\n")
        print(case, "prompt", repr(prompt), "ids", input_ids.shape[1], "seq", length, "max|logit|",
              float(logits.abs().max()), "generated", generated)


if __name__ == "__main__":
    main()
