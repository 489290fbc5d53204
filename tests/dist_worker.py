"""Worker for tests/test_components_end_to_end.py: one rank of a 2-process gloo run of the method recipe.

Run as ``python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py TEACHER_CKPT OUT_DIR``.
Each rank writes OUT_DIR/rank<r>.json with what the test checks.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from conftest import load_method_config  # noqa: E402

from torchdistill_mismatch.dataset import find_auxiliary_dataset  # noqa: E402
from torchdistill_mismatch.distributed import init_distributed  # noqa: E402
from torchdistill_mismatch.processes import servings_per_epoch  # noqa: E402
from torchdistill_mismatch.runner import train_and_evaluate  # noqa: E402


def main() -> None:
    teacher_ckpt, out_dir = sys.argv[1], Path(sys.argv[2])
    distributed, rank, world = init_distributed('cpu')
    assert distributed and world == 2
    torch.manual_seed(rank)  # different initial students: only DDP's broadcast can make them agree
    config = load_method_config(teacher_ckpt, artifact_path=str(out_dir / 'artifact.pt'))
    drawn = []
    boxes = []

    def record(box) -> None:
        boxes.append(box)
        drawn.clear()  # keep the last epoch only: shards are disjoint within an epoch, not across epochs
        drawn.extend(i for batch in box.train_data_loader.batch_sampler for i in batch)

    result = train_and_evaluate(config, 'cpu', distributed=True, on_epoch_end=record)
    student = boxes[-1].student_model
    flat = torch.cat([p.detach().flatten() for p in student.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    dataset = find_auxiliary_dataset(boxes[-1].train_data_loader.dataset)
    report = {'rank': rank, 'test_acc': result.test_acc, 'fitted_here': 'generator_fit' in result.timings,
              'weights_agree': bool(torch.allclose(gathered[0], gathered[1])), 'pool_size': len(dataset.pool_labels),
              'pool_sum': float(dataset.pool_images.sum()), 'last_epoch_indices': drawn,
              'pool_offset': dataset.pool_offset,
              'servings_per_epoch': servings_per_epoch(boxes[-1].train_data_loader.batch_sampler)}
    (out_dir / f'rank{rank}.json').write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == '__main__':
    main()
