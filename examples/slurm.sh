#!/bin/bash
# pixelppo on several machines with SLURM: one torchrun launcher per node, one process per GPU.
# Submit with `sbatch examples/slurm.sh`; edit the resources and the training flags below.
#SBATCH --job-name=pixelppo
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=logs/slurm-%j.out

set -euo pipefail
HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
PORT=29500

# --num-envs is per process: 4 GPUs x 2 nodes x 64 envs = 512 envs; --steps counts all of them.
srun torchrun \
  --nnodes "$SLURM_NNODES" \
  --nproc_per_node "$SLURM_GPUS_PER_NODE" \
  --rdzv-id "$SLURM_JOB_ID" \
  --rdzv-backend c10d \
  --rdzv-endpoint "$HEAD_NODE:$PORT" \
  train.py --preset procgen-official --env procgen/starpilot --logdir "logs/run_$SLURM_JOB_ID"
# A stopped job continues with the same number of processes: replace the training flags by
#   --resume logs/run_<JOB_ID>
