#!/usr/bin/env bash
# Every GPU measurement jft reports, run in the background on the device machine (one H100/H200;
# 10 minutes a call, 15 minutes of device time a session, start included), in order of need: the
# float32 embedding lookups' effect (the third run, 2026-12-06, found two bfloat16 scatters were
# two thirds of the step): the step's profile again, the peers at BERT-base, the ablations; then
# what is not yet measured: BERT-large, GPT-2, ModernBERT, the images, the save hiccup, the padded
# vocabulary, the sweep's populations, the cuDNN check. A child process of peers.py takes about
# 45 s (start, compile, 53 steps), so all of it takes more than one session: what finished comes
# back, the rest is for the next one.
#
#   here, once:  bash benchmarks/gpu_session.sh wheels       # what that machine lacks, into .whl/
#   there:       bash benchmarks/gpu_session.sh start 150   # carry .whl; installs, starts the jobs,
#                                                            # waits 150 s: a failure shows early
#                bash benchmarks/gpu_session.sh wait 540    # again, back to back (the machine goes
#                                                            # back after 30 s idle), until "all done"
#
# Results land in $OUT as results.tgz (the device tool brings back at most 8 files) holding
# profile-*.md and profile-*.hlo.txt, peers.md, peers-345.md, large.md, gpt2.md, modernbert.md, images.md,
# checkpoint_vocab.md, sweep_population.md, gpu_checks.json, ablations.md and log.txt, with
# log.txt beside it, to be copied into benchmarks/RESULTS.md by hand.
# SMOKE=1 runs tiny shapes, to check this script on any machine.
set -u
mode=${1:?"wheels, start or wait"}
work=/tmp/jft-gpu
smoke=${SMOKE:+--smoke}
# sizes, and for a smoke run on a CPU: float32 and XLA attention, tiny shapes
base=base large=large shrink=1 cpu=() image_cpu=()
if [ -n "$smoke" ]; then
    base=tiny large=tiny shrink=8 cpu=(--config.model.dtype=float32 --config.model.attention_impl=xla)
    image_cpu=(--config.model.dtype=float32)
fi

jobs() {
    export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
    # where the bf16 step's time goes, kernel by kernel (name|XLA_FLAGS|arguments), with the
    # embeddings' gradients in float32: pretraining at 256 rows and fine-tuning at 64, the shapes
    # of the third run's profile (RESULTS.md: 223.9 and 68.4 ms before)
    while IFS='|' read -r name flags arguments; do
        XLA_FLAGS="$flags" python3 benchmarks/gpu_profile.py --size $base --batch $((256 / shrink / shrink)) \
            $arguments --out $work/profile-$name.md --hlo $work/profile-$name.hlo.txt ||
            echo "profile $name failed" >> $work/profile-$name.md
    done << 'VARIANTS'
bf16||
finetune64||--workload finetune --batch 64
VARIANTS
    # the peers at BERT-base (seq 128, 256 rows: the first run's cases, on an H200 then), the
    # ablations (precision, layer loop, remat, dropout: each measured with the bf16 scatters
    # before), then the peers' other cases (measured before the fix on 2026-12-06)
    python3 benchmarks/peers.py --cases 1,2 --out $work/peers.md $smoke
    python3 benchmarks/ablations.py --size $base --batch $((256 / shrink / shrink)) \
        --groups "layer loop,precision,remat,short texts" --out $work/ablations.md
    python3 benchmarks/peers.py --cases 3,4,5 --out $work/peers-345.md $smoke
    # BERT-large: the largest batch of these that fits, at each length.
    for seq_batches in "128 512 256 128" "512 128 64 32"; do
        set -- $seq_batches
        seq=$(($1 / shrink))
        shift
        for batch in "$@"; do
            batch=$((batch / shrink / shrink))
            # BERT's masked predictions: 20 a row of 128, 80 of 512
            if python3 -m jft.cli bench --config configs/bench.py:$large --config.seq_len=$seq \
                --config.max_predictions=$((seq * 20 / 128)) --config.batch_size=$batch "${cpu[@]}" \
                --out $work/large-$seq-$batch.json >> $work/large.md; then
                break
            fi
            echo "BERT-large seq $seq batch $batch did not run (out of memory?)" >> $work/large.md
        done
    done
    # GPT-2 small: next-word pretraining (cuDNN's causal attention) and its classifier (RESULTS.md, pending)
    gpt2=gpt2_small
    [ -n "$smoke" ] && gpt2=gpt2_tiny
    python3 -m jft.cli bench --config bench:$gpt2 --config.seq_len=$((1024 / shrink)) \
        --config.batch_size=$((16 / shrink)) "${cpu[@]}" --out $work/gpt2.json > $work/gpt2.md ||
        echo "GPT-2 small did not run (out of memory?)" >> $work/gpt2.md
    # ModernBERT-base: masked-LM at 30% over rows of 512 (cuDNN with its sliding window) and its
    # classifier (RESULTS.md, pending)
    modernbert=modernbert_base
    [ -n "$smoke" ] && modernbert=modernbert_tiny
    python3 -m jft.cli bench --config bench:$modernbert --config.seq_len=$((512 / shrink)) \
        --config.max_predictions=$((154 / shrink)) --config.batch_size=$((32 / shrink)) "${cpu[@]}" --out $work/modernbert.json > $work/modernbert.md ||
        echo "ModernBERT-base did not run (out of memory?)" >> $work/modernbert.md
    # ResNet-50 and VGG-16 (BatchNorm) at 224: supervised pretraining's step, augmentation in it, in
    # images a second (RESULTS.md, pending)
    resnet=resnet50 vgg=vgg16_bn
    [ -n "$smoke" ] && resnet=resnet_tiny vgg=vgg_tiny
    for image_model in $resnet $vgg; do
        python3 -m jft.cli bench --config bench:$image_model --config.workloads=pretrain \
            --config.batch_size=$((256 / shrink)) "${image_cpu[@]}" --out $work/$image_model.json >> $work/images.md ||
            echo "$image_model did not run (out of memory?)" >> $work/images.md
    done
    # a checkpoint save's step-time hiccup, and the padded vocabulary's speed (RESULTS.md, pending)
    (cd benchmarks && python3 save_hiccup.py --size $base --batch $((64 / shrink)) &&
        python3 vocab_padding.py --size $base --batch $((64 / shrink)) --rounds 10 --topology "") > $work/checkpoint_vocab.md
    # K fine-tunings as one population (jft sweep) against the same K one by one (RESULTS.md, pending)
    python3 benchmarks/sweep_population.py --size $base --members 8,32 --batch 32 --rounds 5 \
        --out $work/sweep_population.md
    # measured on 2026-12-05: again, for the changes since
    [ -z "$smoke" ] && python3 benchmarks/gpu_checks.py --out $work/gpu_checks.json
    touch $work/done
}

case $mode in
wheels)
    grep -qx '/.whl/' .git/info/exclude || echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.0 ml_collections==1.1.0 tensorboardX==2.6.4
    ;;
start)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
        exit 1
    rm -rf $work && mkdir -p $work
    (setsid nohup bash benchmarks/gpu_session.sh jobs > $work/log.txt 2>&1 < /dev/null &)
    bash benchmarks/gpu_session.sh wait "${2:-540}"
    ;;
jobs)
    jobs
    ;;
wait)
    # up to $2 seconds (default 540), the results copied to $OUT at every look: a call cut off at
    # its limit still brings back what had finished
    deadline=$((SECONDS + ${2:-540}))
    while :; do
        tar czf "${OUT:-/tmp}/results.tgz" -C $work --exclude done . 2> /dev/null
        cp $work/log.txt "${OUT:-/tmp}/" 2> /dev/null
        [ -e $work/done ] || [ $SECONDS -ge $deadline ] && break
        sleep 5
    done
    tail -n 5 $work/log.txt
    if [ -e $work/done ]; then echo "all done"; else echo "still running: call wait again"; fi
    ;;
*)
    echo "unknown mode $mode: wheels, start or wait" >&2
    exit 2
    ;;
esac
