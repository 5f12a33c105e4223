# Next-line continuation of real Shakespeare, char-level, from scratch, sized for a laptop CPU:
#   OMP_NUM_THREADS=1 python train.py config/shakespeare_char.py     (flags after it override it)
# 1-2 minutes with that one thread on a 2-core CPU; it ends at
#   eval 500: val loss 3.1628, val nll 2.4959, val td 6.6689
# (one thread; --seed=0..4: val nll 2.491-2.496). The samples are letter soup with Shakespeare's spacing and
# punctuation, not words: python sample.py --out_dir=out-shakespeare scores ROUGE-L 0.011 against the true next
# line (seeds 0-4: 0.011-0.015). Words need a model pre-trained on the plays first, as
# python lab/experiment.py --task=shakespeare does (results/README.md).
out_dir = "out-shakespeare"  # its own folder: `python train.py` right before it wrote out/
dataset = "shakespeare"
block_size = 288  # the longest example, [EOS] + 3 lines + 1 line + [EOS], is 288 tokens: none is cut
batch_size = 16
max_iters = 500  # the learning rate decays to min_lr here (lr_decay_iters = 0 follows max_iters)
warmup_iters = 50
eval_interval = 250
