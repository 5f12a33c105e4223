# Next-line continuation of real Shakespeare, char-level, sized for a laptop CPU (about a minute with one
# thread on a 2-core CPU; the samples are letter soup with Shakespeare's spacing and punctuation, not words):
#   python train.py config/shakespeare_char.py              (flags after it override it)
out_dir = "out-shakespeare"  # its own folder: `python train.py` right before it wrote out/
dataset = "shakespeare"
block_size = 288  # the longest example, [EOS] + 3 lines + 1 line + [EOS], is 288 tokens: none is cut
batch_size = 16
max_iters = 500  # the learning rate decays to min_lr here (lr_decay_iters = 0 follows max_iters)
warmup_iters = 50
eval_interval = 250
