# Next-line continuation of real Shakespeare, char-level, sized for a laptop CPU (a few minutes):
#   python train.py config/shakespeare_char.py              (flags after it override it)
out_dir = "out-shakespeare"  # its own folder: `python train.py` right before it wrote out/
dataset = "shakespeare"
block_size = 128  # a 3-line prompt is ~130 characters: its start is cut, the completion always fits
batch_size = 16
max_iters = 500
lr_decay_iters = 500
warmup_iters = 50
eval_interval = 250
