"""Save a hub-ready folder (weights in shards, processor, chat template, model card, remote code) and upload it.

    python examples/push_to_hub.py                                   # saves ./tiny-hybrid-vlm; no network
    python examples/push_to_hub.py --model out/ --folder my-model    # a fine-tuned folder
    python examples/push_to_hub.py --repo-id you/my-model            # also uploads (needs `huggingface-cli login`)

The folder loads with `AutoModelForImageTextToText.from_pretrained(folder)` after `import hybrid_vlm`, or without the
package with `trust_remote_code=True`, and `pipeline("image-text-to-text", model=folder)` answers from it.
See docs/publishing.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import transformers
from transformers import AutoProcessor

import hybrid_vlm
from hybrid_vlm.hub import write_model_card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="jamba-llava-tiny", help="a preset name or a saved folder")
    parser.add_argument("--folder", default="tiny-hybrid-vlm", help="where to write the hub-ready folder")
    parser.add_argument("--base-model", default=None, help="Hub id of the model this one was fine-tuned from")
    parser.add_argument("--max-shard-size", default="5GB", help="e.g. 200KB to see sharding on a tiny model")
    parser.add_argument("--repo-id", default=None, help="upload to this Hub repository (needs network and a token)")
    parser.add_argument("--private", action="store_true")
    args = parser.parse_args()

    if args.model in hybrid_vlm.list_presets():
        model, processor = hybrid_vlm.from_preset(args.model)
    else:
        model = transformers.AutoModelForImageTextToText.from_pretrained(args.model)
        processor = AutoProcessor.from_pretrained(args.model)

    folder = Path(args.folder)
    model.save_pretrained(folder, remote_code=True, max_shard_size=args.max_shard_size)
    processor.save_pretrained(folder, remote_code=True)
    if args.base_model:  # a card we wrote is regenerated; a README.md you wrote is left alone
        write_model_card(folder, model, base_model=args.base_model, remote_code=True)
    print(f"saved {len(list(folder.iterdir()))} files to {folder}/:")
    for path in sorted(folder.iterdir()):
        print(f"  {path.name:<40} {path.stat().st_size:>10,} bytes")
    print("\nREADME.md front matter:\n" + (folder / "README.md").read_text().split("---")[1].strip())

    if args.repo_id is None:
        print(f"\nTo upload: HfApi().upload_folder(repo_id='you/name', folder_path='{folder}') or --repo-id you/name")
        return
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(args.repo_id, private=args.private, exist_ok=True)
    # upload_folder sends the folder as saved (a loaded model can also call model.push_to_hub(repo_id, processor=...)).
    info = api.upload_folder(repo_id=args.repo_id, folder_path=str(folder), commit_message="Upload HybridVLM model")
    print(f"uploaded: {info}")


if __name__ == "__main__":
    main()
