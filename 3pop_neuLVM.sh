#!/usr/bin/env bash
# Five EM fits of neuLVM to the 9 observed neurons of the shipped dataset (the paper's Fig. 4),
# from five random initial parameter sets (--train_Noinit 0..4), then the name of the best run.
#
#   bash 3pop_neuLVM.sh                 # all five, as many at once as there are cores
#   bash 3pop_neuLVM.sh -j 1            # one at a time
#   bash 3pop_neuLVM.sh -- --resume     # options after -- go to every train_meso.py run
#   bash 3pop_neuLVM.sh -- --estep map --train_folderbase map   # the paper's MAP E-step, beside them
#   bash 3pop_neuLVM.sh --progress      # from another terminal: the EM step each run has reached
set -u
# The whole script is one group, which bash reads to the end before it runs any of it: bash otherwise
# reads a script as it goes, and this file rewritten in place during the runs (an editor saving over it)
# would change what the run does next.
{
cd "$(dirname "$0")"
jobs=$(nproc 2>/dev/null || echo 1)
runs="0 1 2 3 4"
progress=0
while [ $# -gt 0 ]; do
  case "$1" in
    -j) jobs="$2"; shift 2 ;;
    -j*) jobs="${1#-j}"; shift ;;
    --runs) runs="$2"; shift 2 ;;
    --progress) progress=1; shift ;;
    --) shift; break ;;
    *) echo "3pop_neuLVM.sh: unknown option $1 (use -j N, --runs \"0 1 2\", --progress, -- train_meso options)" >&2; exit 2 ;;
  esac
done
case "$jobs" in ''|*[!0-9]*|0) echo "3pop_neuLVM.sh: -j must be a whole number >= 1, got '$jobs'" >&2; exit 2 ;; esac
save_dir="result/3pop example/"
# where the runs write, as train_meso.py itself resolves the options passed through (--SAVE_DIR,
# --end_timepoint, --train_folderbase); options it refuses leave the defaults here, and each run says why
where=$(python -c 'import os, sys, train_meso
o = train_meso.parse_options(sys.argv[1:])
print(os.path.dirname(train_meso.run_folder(o))); print(o.train_folderbase)' --SAVE_DIR "$save_dir" "$@" 2>/dev/null) \
  || where=$(printf '%s\n%s' "${save_dir}data11" train)
folder=$(echo "$where" | sed -n 1p)
base=$(echo "$where" | sed -n 2p)
mkdir -p "$folder"
threads=1   # one intra-op thread per run is fastest here (src/LIFmesoCell.py)

# While the runs work: the EM step each has reached, from the lines train_meso.py writes as it goes
# ("M-step e: ...", "E-step e: ...", "done in ..."; an SMC run first writes "E-step at theta_init: ..."),
# on one updating line in a terminal, otherwise as a line whenever it changes (at most every $every s).
every=30
status_line() {
  local line="" i text log
  for i in "${names[@]}"; do
    log="$folder/${base}${i}.out"
    text=$(grep -E '^[0-9:]+ (M-step [0-9]+:|E-step [0-9]+:|E-step at theta_init|done in|resuming|interrupted during)' "$log" 2>/dev/null | tail -n 1)
    case "$text" in
      *" done in "*) text="done" ;;
      *" interrupted during "*) text="interrupted" ;;
      *" E-step at theta_init"*) text="EM step 0 (start)" ;;   # before " E-step ", which it matches too
      *" M-step "*) text="EM step $(echo "$text" | sed -E 's/.* M-step ([0-9]+):.*/\1/') (E-step)" ;;
      *" E-step "*) text="EM step $(( $(echo "$text" | sed -E 's/.* E-step ([0-9]+):.*/\1/') + 1 )) (M-step)" ;;
      *" resuming "*) text="EM step $(echo "$text" | sed -E 's/.* at EM step ([0-9]+).*/\1/') (resumed)" ;;
      *) if [ -e "$log" ]; then text="starting"; else text="not started"; fi ;;
    esac
    line="$line${line:+, }run $i: $text"
  done
  echo "$line"
}
shown="" shown_at=0
show_status() {   # show_status [final]
  local line now
  [ ${#names[@]} -gt 0 ] || return 0
  line=$(status_line); now=$(date +%s)
  if [ -t 1 ]; then
    printf '\r\033[K%s' "$line"
    [ "${1:-}" = final ] && printf '\r\033[K'
  elif [ "$line" != "$shown" ] && { [ $((now - shown_at)) -ge $every ] || [ "${1:-}" = final ]; }; then
    echo "$(date +%H:%M:%S) $line"; shown="$line"; shown_at=$now
  fi
}

if [ $progress = 1 ]; then
  names=($runs)
  status_line
  exit 0
fi

failed=0
pids=()
names=()
for i in $runs; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do show_status; sleep 1; done
  log="$folder/${base}${i}.out"
  [ -t 1 ] && printf '\r\033[K'
  echo "run $i -> $log"
  python train_meso.py --train_Noinit "$i" --SAVE_DIR "$save_dir" --threads "$threads" "$@" > "$log" 2>&1 &
  pids+=($!); names+=("$i")
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do show_status; sleep 1; done
show_status final
for k in "${!pids[@]}"; do
  if ! wait "${pids[$k]}"; then
    echo "run ${names[$k]} FAILED: see $folder/${base}${names[$k]}.out" >&2
    failed=1
  fi
done
python -m src.runs "$folder" || failed=1
exit $failed
}
