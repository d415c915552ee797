#!/bin/bash
# Run bench/recipe/run.py invocations sequentially (one training at a time), one per line of
# a file: `bench/recipe/queue.sh FILE` (lines are run.py arguments; # comments skipped).
cd "$(dirname "$0")/../.." || exit 1
export PYTHONPATH=$PWD PATH=$PWD/.venv/bin:$PATH OMP_NUM_THREADS=1
while IFS= read -r line; do
  [[ -z "$line" || "$line" == \#* ]] && continue
  echo "=== $(date +%T) $line"
  eval python bench/recipe/run.py $line 2>&1 | grep -v '^\s*$' | grep -E '^\{|Error|error|Traceback' 
done < "$1"
echo "=== $(date +%T) queue done"
