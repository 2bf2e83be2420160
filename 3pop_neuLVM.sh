#!/usr/bin/env bash
# Five EM fits of neuLVM to the 9 observed neurons of the shipped dataset (the paper's Fig. 4),
# from five random initial parameter sets (--train_Noinit 0..4), then the name of the best run.
#
#   bash 3pop_neuLVM.sh                 # all five, as many at once as there are cores
#   bash 3pop_neuLVM.sh -j 1            # one at a time
#   bash 3pop_neuLVM.sh -- --resume     # options after -- go to every train_meso.py run
set -u
cd "$(dirname "$0")"
jobs=$(nproc 2>/dev/null || echo 1)
runs="0 1 2 3 4"
while [ $# -gt 0 ]; do
  case "$1" in
    -j) jobs="$2"; shift 2 ;;
    -j*) jobs="${1#-j}"; shift ;;
    --runs) runs="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "3pop_neuLVM.sh: unknown option $1 (use -j N, --runs \"0 1 2\", -- train_meso options)" >&2; exit 2 ;;
  esac
done
case "$jobs" in ''|*[!0-9]*|0) echo "3pop_neuLVM.sh: -j must be a whole number >= 1, got '$jobs'" >&2; exit 2 ;; esac
save_dir="result/3pop example/"
folder="${save_dir}data11"
mkdir -p "$folder"
threads=1   # one intra-op thread per run is fastest here (src/LIFmesoCell.py)

failed=0
pids=()
names=()
for i in $runs; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  log="$folder/train${i}.out"
  echo "run $i -> $log"
  python train_meso.py --train_Noinit "$i" --SAVE_DIR "$save_dir" --threads "$threads" "$@" > "$log" 2>&1 &
  pids+=($!); names+=("$i")
done
for k in "${!pids[@]}"; do
  if ! wait "${pids[$k]}"; then
    echo "run ${names[$k]} FAILED: see $folder/train${names[$k]}.out" >&2
    failed=1
  fi
done
python -m src.runs "$folder" || failed=1
exit $failed
