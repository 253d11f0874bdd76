#!/usr/bin/env bash
# `make demo`: the whole product on a small corpus that it builds for itself, with no network.
#   1. generate CC3M, CC12M, COCO, Visual Genome, Karpathy and VQAv2 sources in their real formats,
#      with images served by a local fault-injecting HTTP server on 127.0.0.1;
#   2. `curate run` builds the corpus (download, filter, dedup, decontaminate, shard) and its report;
#   3. `curate tokenizer` trains its SentencePiece model;
#   4. `train launch` runs the MAE stage then the fusion stage on 2 CPU processes, and resumes;
#   5. `evaluate` scores captioning and VQA on the held-out eval shards, and the demo ends with a few held-out
#      pictures' captions and answers beside their references and the accuracy per question type.
# The demo world (`--scale demo`) keeps every planted curation case but draws plainly visible shapes, so the
# tiny model of training/configs/demo.toml learns it in the demo's few minutes.
# Every command below is the one a user would type; DEMO_DIR (default ./demo) holds everything.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH" OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
D=${DEMO_DIR:-demo}
rm -rf "$D" && mkdir -p "$D"
D=$(cd "$D" && pwd)   # absolute: the configs below name files under it
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Pillow in use: $(python -c 'import PIL; print(PIL.__version__)')"

step "1. test sources and the local image server"
PORT=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
curate sources build "$D/sources" --base-url "http://127.0.0.1:$PORT" --scale demo
curate sources serve "$D/sources" --port "$PORT" > "$D/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done

S="$D/sources"
cat > "$D/curate.toml" <<TOML
output = "$D/corpus"

[[sources]]
kind = "cc3m"
path = "$S/Train_GCC-training.tsv"

[[sources]]
kind = "cc12m"
path = "$S/cc12m.tsv"

[[sources]]
kind = "coco"
captions = "$S/annotations/captions_train2017.json"
images = "$S/train2017"

[[sources]]
kind = "vg"
image_data = "$S/image_data.json"
region_descriptions = "$S/region_descriptions.json"
question_answers = "$S/question_answers.json"

[[eval_sets]]
kind = "coco-karpathy"
path = "$S/dataset_coco.json"
images = "$S/coco_images"

[[eval_sets]]
kind = "vqav2"
questions = "$S/v2_OpenEnded_mscoco_val2014_questions.json"
annotations = "$S/v2_mscoco_val2014_annotations.json"
images = "$S/val2014"

[download]
allowed_networks = ["127.0.0.1/32"]   # the demo's own server; everything private stays refused
timeout = 2.0
unit_rows = 500                      # a few fetch units even for this small world

[resize]
image_size = 64

[dedup]
# The demo world's captions are templates ("a red circle and a blue square") that many pictures share by
# design; the cap on images per caption is meant for web boilerplate and would strip most of them.
max_images_per_caption = 1000000

[shard]
samples_per_shard = 100
TOML

step "2. curate run"
curate run --config "$D/curate.toml"

step "3. curate tokenizer"
curate tokenizer "$D/corpus" --vocab-size 320 --out "$D/corpus/tokenizer.model"
curate stats "$D/corpus" --out "$D/corpus/report" --tokenizer "$D/corpus/tokenizer.model"

step "4. train launch: MAE stage, fusion stage, then a resumed fusion run (2 CPU processes, gloo)"
COMMON=(--config training/configs/demo.toml --nproc-per-node 2
        --set "data.shards=$D/corpus" --set "init.tokenizer=$D/corpus/tokenizer.model"
        --set "eval.shards=$D/corpus/eval/coco-karpathy-val")
train launch "${COMMON[@]}" --set stage=mae --set "run_dir=$D/runs/mae" --set schedule.total_steps=30 \
    --set schedule.warmup_steps=5 --set checkpoint.every_steps=30
FUSION=(--set stage=fusion --set "run_dir=$D/runs/fusion" --set "init.mae_encoder=$D/runs/mae")
train launch "${COMMON[@]}" "${FUSION[@]}" --set train.stop_at_step=300   # stops at step 300 ...
train launch "${COMMON[@]}" "${FUSION[@]}"                                # ... and resumes there to the end

step "5. evaluate on the held-out eval shards"
evaluate caption --checkpoint "$D/runs/fusion" --data "$D/corpus/eval/coco-karpathy-test" --out "$D/eval/caption" \
    --max-new-tokens 20 --no-progress
evaluate vqa --checkpoint "$D/runs/fusion" --data "$D/corpus/eval/vqav2" --out "$D/eval/vqa" --no-progress

step "done"
echo "corpus:     $D/corpus (manifest.json, funnel.json)"
echo "report:     $D/corpus/report/report.html"
echo "tokenizer:  $D/corpus/tokenizer.model"
echo "metrics:    $D/runs/fusion/metrics.jsonl"
echo "scores:     $D/eval/caption/scores.json  $D/eval/vqa/scores.json"
python - "$D" <<'PY'
import json, sys
from collections import Counter
d = sys.argv[1]
c = json.load(open(f"{d}/eval/caption/scores.json"))
v = json.load(open(f"{d}/eval/vqa/scores.json"))
results = json.load(open(f"{d}/eval/caption/captions_results.json"))
refs = json.load(open(f"{d}/eval/caption/captions_references.json"))["annotations"]
print("\nHeld-out pictures, generated caption | one of its references:")
for r in results[:4]:
    ref = next(a["caption"] for a in refs if a["image_id"] == r["image_id"])
    print(f"  image {r['image_id']}: {r['caption']!r:48} | {ref!r}")
answers = {a["question_id"]: a for a in json.load(open(f"{d}/eval/vqa/vqa_annotations.json"))["annotations"]}
questions = {q["question_id"]: q["question"] for q in json.load(open(f"{d}/eval/vqa/vqa_questions.json"))["questions"]}
print("\nHeld-out questions, generated answer | most common human answer:")
for r in json.load(open(f"{d}/eval/vqa/vqa_results.json"))[:8]:
    human = Counter(a["answer"] for a in answers[r["question_id"]]["answers"]).most_common(1)[0][0]
    print(f"  {questions[r['question_id']]:40} {r['answer']!r:10} | {human!r}")
print(f"\ncaptioning: CIDEr {c['CIDEr']:.3f}  BLEU-4 {c['Bleu_4']:.3f}  SPICE "
      f"{'n/a' if c.get('SPICE') is None else format(c['SPICE'], '.3f')}  on {c['num_images']} held-out pictures")
per_type = "  ".join(f"{k} {x:.1f}%" for k, x in v["perQuestionType"].items())
print(f"VQA:        accuracy {v['overall']:.2f}% on {v['num_questions']} held-out questions ({per_type})")
PY
