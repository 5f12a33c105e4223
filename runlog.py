"""
What a training run reports: out_dir/log.jsonl (one JSON line per evaluation, appended and fsynced,
none twice when a run resumes), the eval and progress lines it prints, and Weights & Biases when
asked (--wandb_log). Only the process that saves (rank 0) reports; the others keep time alone.
"""
import time
from contextlib import contextmanager

from runfiles import append_json_line, trim_log


class RunLog:

    def __init__(self, log_path, last_iter, master, online, world_size):
        """last_iter: the checkpoint's iteration when resuming (the log keeps its lines up to it, and
        a line a crash cut short goes), -1 for a new run (the log of a start that saved nothing goes)."""
        self.path, self.master, self.online, self.world_size = log_path, master, online, world_size
        self.logged = trim_log(log_path, last_iter) if master else set()  # iterations it holds
        self.wandb_run = None
        self.start_iter = self.last_iter = max(last_iter, 0)
        self.sample_seconds = self.step_seconds = 0.0  # since start_iter: sampling, whole steps
        self.sample_at_last, self.tokens, self.t0 = 0.0, 0, time.time()

    def start_wandb(self, project, name, config):
        """A W&B run beside log.jsonl; ValueError with W&B's reason when it cannot start one."""
        import wandb  # imported only when asked for (check_run made sure it is installed)
        try:
            self.wandb_run = wandb.init(project=project, name=name, config=config)
        except Exception as err:  # no network, a login W&B refuses ...
            first = (str(err).strip().splitlines() or [""])[0][:160]
            raise ValueError(f"W&B did not start a run ({type(err).__name__}: {first}); check the "
                             f"network or set WANDB_MODE=offline") from None

    @contextmanager
    def paused(self):
        """Progress lines time training steps only: an evaluation in between is left out."""
        t = time.time()
        yield
        self.t0 += time.time() - t

    def step_times(self, iter_num):
        """Mean time per step since this process started training: sampling, and the update."""
        steps = iter_num - self.start_iter
        if steps == 0:
            return {}
        return {"time/sample_ms": 1000 * self.sample_seconds / steps,
                "time/update_ms": 1000 * (self.step_seconds - self.sample_seconds) / steps}

    def evaluation(self, record):
        """log.jsonl's line and the eval line; ValueError when the log cannot be written."""
        if not self.master or record["iter"] in self.logged:
            return
        append_json_line(self.path, record)
        score = "".join(f", val {key[4:]} {record[key]:.3f}" for key in ("val/accuracy", "val/rougeL")
                        if key in record)
        print(f"eval {record['iter']}: val loss {record['val/loss']:.4f}, val nll "
              f"{record['val/nll']:.4f}, val td {record['val/td']:.4f}{score}")
        if self.wandb_run:
            self.wandb_run.log(record, step=record["iter"])

    def progress(self, iter_num, loss_value, stats):
        """The progress line of the step before iter_num: time per step and tokens per second
        (padding excluded) since the last one."""
        seconds, steps = time.time() - self.t0, iter_num - self.last_iter
        extra = "".join(f", {k} {stats[k]:.4f}" for k in ("td", "v_mean", "entropy", "value_gap", "kl",
                                                          "sample_entropy", "reward", "disc_accuracy")
                        if k in stats)
        sampling = self.sample_seconds - self.sample_at_last
        split = f" ({1000 * sampling / steps:.0f} sampling)" if self.online else ""
        tokens_per_s = self.tokens * self.world_size / seconds
        print(f"iter {iter_num - 1}: loss {loss_value:.4f}, nll {stats['nll']:.4f}{extra}, "
              f"{1000 * seconds / steps:.0f} ms/iter{split}, {tokens_per_s:.0f} tok/s")
        if self.wandb_run:
            self.wandb_run.log({"train/loss": loss_value, **{f"train/{k}": v for k, v in stats.items()},
                                "time/ms_per_iter": 1000 * seconds / steps,
                                "tokens_per_s": tokens_per_s}, step=iter_num - 1)
        self.t0, self.tokens, self.last_iter = time.time(), 0, iter_num
        self.sample_at_last = self.sample_seconds

    def finish(self):
        if self.wandb_run:
            self.wandb_run.finish()

