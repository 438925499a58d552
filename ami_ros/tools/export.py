"""ami-ros export: (re)write the ONNX exports of a model folder and update its card."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("model", help="model folder (weights.pt + card.yaml)")


def run(args) -> int:
    import sys

    from ami_ros.core.model_io import ModelError, load_model, read_card, save_model

    try:
        m = load_model(args.model, backend="torch", device="cpu")
        card = read_card(args.model)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    card = save_model(args.model, m.torch_model, card)
    print(f"exported ONNX for {card['model_id']} into {args.model}")
    return 0
