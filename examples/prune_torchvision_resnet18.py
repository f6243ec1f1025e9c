"""Prune a torchvision ResNet-18 on an ImageNet-style image folder, with your own training loop.

    python examples/prune_torchvision_resnet18.py DATA_DIR --out runs/r18
    python examples/prune_torchvision_resnet18.py DATA_DIR --weights my_r18.pt --out runs/r18

DATA_DIR holds ``train/<class>/*.jpg`` and ``val/<class>/*.jpg``. The script trains ResNet-18
(or loads your ``--weights``, a state dict), finds the layers most sensitive to pruning on a
validation share held out of ``train/`` (Li et al. 2017, §3.2), skips them, removes
``--ratio`` of the filters of every other prunable conv (the first conv of each residual block:
the paper's scheme for ResNets), retrains with the same loop (§3.4), prints MACs, parameters and
top-1 on ``val/`` before and after, and saves the pruned model with ``filterprune.save``.
``filterprune summary --checkpoint OUT/resnet18-pruned.safetensors`` then reads it.

Everything except the ``filterprune`` calls is the plain PyTorch a user already has. ``--tiny``
(small images, one epoch, one ratio) runs in seconds on a few images per class.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import transforms

import filterprune
from filterprune.checkpoint import ModelSpec

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def loaders(data_dir: Path, size: int, batch_size: int, workers: int, seed: int):
    """Your own data: (fit, validation, test) loaders; validation is 10% of train/."""
    train_tf = transforms.Compose([
        transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    eval_tf = transforms.Compose([
        transforms.Resize(int(size * 8 / 7)), transforms.CenterCrop(size),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    fit_set = torchvision.datasets.ImageFolder(data_dir / "train", train_tf)
    held_set = torchvision.datasets.ImageFolder(data_dir / "train", eval_tf)
    order = torch.randperm(len(fit_set), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, len(order) // 10)
    test_set = torchvision.datasets.ImageFolder(data_dir / "val", eval_tf)

    def loader(dataset, shuffle):
        return DataLoader(dataset, batch_size, shuffle=shuffle, num_workers=workers,
                          drop_last=shuffle)

    return (loader(Subset(fit_set, order[n_val:]), True),
            loader(Subset(held_set, order[:n_val]), False),
            loader(test_set, False), len(fit_set.classes))


def train(model: nn.Module, loader: DataLoader, epochs: int, lr: float, device) -> None:
    """A plain SGD loop with a cosine schedule."""
    optimizer = torch.optim.SGD(model.parameters(), lr, momentum=0.9, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * len(loader)))
    model.train()
    for epoch in range(epochs):
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")


@torch.no_grad()
def top1(model: nn.Module, loader: DataLoader, device) -> float:
    """Top-1 accuracy in %."""
    model.eval()
    correct = total = 0
    for images, labels in loader:
        correct += (model(images.to(device)).argmax(1).cpu() == labels).sum().item()
        total += len(labels)
    return 100 * correct / total


def main(argv: list[str] | None = None) -> tuple[Path, nn.Module]:
    """Returns the saved file and the pruned model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="folder with train/<class>/ and val/<class>/")
    parser.add_argument("--out", type=Path, default=Path("runs/resnet18-pruned"))
    parser.add_argument("--weights", type=Path, help="trained state dict (.pt); else train")
    parser.add_argument("--epochs", type=int, default=30, help="training epochs")
    parser.add_argument("--retrain-epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--ratio", type=float, default=0.5, help="fraction of filters removed")
    parser.add_argument("--skip-sensitive", type=int, default=2,
                        help="leave this many of the most sensitive layers unpruned")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="seconds, for a smoke test")
    args = parser.parse_args(argv)
    ratios = [0.5] if args.tiny else [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    if args.tiny:
        args.epochs, args.retrain_epochs, args.image_size = 1, 1, 32
        args.batch_size, args.workers, args.lr = 8, 0, 0.01
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    fit, validation, test, num_classes = loaders(
        args.data_dir, args.image_size, args.batch_size, args.workers, seed=0)
    args.out.mkdir(parents=True, exist_ok=True)

    model = torchvision.models.resnet18(num_classes=num_classes).to(device)
    if args.weights:
        model.load_state_dict(torch.load(args.weights, map_location=device, weights_only=True))
    else:
        print(f"training ResNet-18 for {args.epochs} epoch(s)")
        train(model, fit, args.epochs, args.lr, device)
        torch.save(model.state_dict(), args.out / "baseline.pt")
    model.eval()
    example = torch.zeros(1, 3, args.image_size, args.image_size, device=device)

    # Each prunable conv pruned alone at each ratio, scored on the validation share (Fig. 2b).
    sens = filterprune.sensitivity(model, example, data=validation, ratios=ratios,
                                   split="validation", progress=not args.tiny)
    print(sens.table())
    sens.plot(args.out / "sensitivity.png")
    skip = sens.most_sensitive(args.skip_sensitive)
    print(f"skipping the most sensitive layers: {', '.join(skip)}")

    result = filterprune.prune(model, example, ratio=args.ratio, skip=skip)
    pruned = result.model
    print(f"pruned the filters of {len(result.plan.kept)} convs, reaching "
          f"{result.coverage.reached_share:.0%} of the conv MACs asked for (a conv is reached when "
          "its filters or inputs shrink; result.coverage.blocked says why the rest are not)")
    before = filterprune.profile(model, example), top1(model, test, device)
    print(f"retraining the pruned model for {args.retrain_epochs} epoch(s)")
    train(pruned, fit, args.retrain_epochs, args.lr / 10, device)
    after = filterprune.profile(pruned, example), top1(pruned, test, device)
    for name, (cost, acc) in (("before", before), ("after", after)):
        print(f"{name:<7} MACs {cost.macs:>14,}  params {cost.params:>11,}  "
              f"top-1 (val/) {acc:.2f}%")

    spec = ModelSpec("torchvision:resnet18", {"num_classes": num_classes},
                     tuple(example.shape), result.plan)
    path = filterprune.save(pruned, args.out / "resnet18-pruned.safetensors", spec=spec)
    print(f"saved {path}")
    return path, pruned


if __name__ == "__main__":
    main()
