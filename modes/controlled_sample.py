"""`main.py --mode sample` with `config.sampling.task` other than "sample": controllable
generation from the latest EMA checkpoint (Song et al. 2021, Sec. 5 and App. I)."""
from __future__ import annotations

import os
import time

import jax
from absl import logging

import sde_lib
from common.io import join, result_dir, save_npz
from common.keys import stream_key
from evaluation.controlled import get_task_settings, sample_task, save_picture
from evaluation.samples import check_finite_samples, sample_settings
from training.classifier import restore_classifier
from training.restore import restore_model


def run(config, workdir: str) -> str:
  """Runs config.sampling.task (inpaint, colorize or class) from the latest EMA
  checkpoint in workdir; returns the path of samples.npz.

  Raises UserError (before restoring anything) for bad settings or inputs,
  MissingFileError for a missing checkpoint, inputs or mask file.

  Tasks (config.sampling.task):
    inpaint   the known part of each input is kept and the rest generated with score_sde's
              PC inpainter (`solvers.get_inpainter`: the known part replaced at every step
              by the data re-noised to that time), or with config.sampling.method =
              "fast" the configured fast sampler with the same rule
              (`solvers.get_fast_inpainter`).
    colorize  RGB images: their gray level (channel mean) is kept and the colour generated
              with score_sde's PC colorizer (`solvers.get_colorizer`). method "pc".
    class     samples of the requested classes with any sampler (pc, ode, sde, fast):
              classifier-free guidance of a class-conditional model (Ho and Salimans 2022:
              (1 + w) cond - w uncond; w = config.sampling.guidance_weight, 0 = the plain
              conditional model), and/or classifier guidance (score + s grad log p_t(y | x),
              s = config.sampling.classifier_scale > 0) with the noise-conditional classifier
              of `--mode train_classifier` in <classifier_workdir>/classifier.

  Fields of config.sampling read here:
    inputs            "eval": the first eval.num_samples images of the 'test' split (toy data:
                      fresh draws from the key stream "controlled_inputs"); or a path to an
                      .npz: images uint8 under 'images'/'x' (data/npz.py), toy points float
                      (N, dim) under 'x'/'points'.
    mask              the region that is GENERATED (mask 0), the rest is kept (mask 1):
                      "center" (the center square of half the side), "left_half" (the left
                      half of the columns; toy data: the first half of the coordinates), or
                      "random" (each pixel, all its channels together, generated with
                      probability mask_fraction, drawn per batch from the key stream "mask").
    mask_path         a mask file, overriding `mask`: .npz (array 'mask', or its only array)
                      of 0/1 values or .png (white = known); shape (H, W), (H, W, 1) or
                      (H, W, C) for images, (dim,) for toy data; one mask for every input.
    mask_fraction     "random": the fraction of pixels generated, in (0, 1).
    class_labels      "class": "" = 0, 1, ..., K-1 in turn; "3" = every sample a 3; "1,7" =
                      1, 7, 1, 7, ...
    guidance_weight, classifier_scale, classifier_workdir ("" = --workdir): as above.

  Outputs, in `<workdir>/<task>/<method>_step<step>-<hash>/` (common/io.py
  `result_dir`: the hash keys every setting that affects the samples, including the
  contents of the inputs and mask files and the classifier's step): samples.npz with
  `samples` (N, ...) in data space, `inputs` (the inputs; for colorize the originals),
  `mask` (N, ...) (inpaint), `class_labels` (N,) (class) and `nfe` (mean per batch); and
  samples.png: images as rows input / mask / observed / samples (inpaint), original / gray /
  samples (colorize), one row per class (class); toy data as scatter panels.

  Keys: batch i of the sampler uses fold_in(stream_key(seed, "controlled"), i); the random
  mask of batch i fold_in(stream_key(seed, "mask"), i), a stream of its own, so the mask
  never shares a draw with the sampler's noise.

  Every user mistake is found before the checkpoint is restored and raises UserError
  (main.py: one line, exit 2): a mask of another shape than the data, a class label out of
  range, guidance on an unconditional model, colorization of data without three channels,
  an unknown task or mask name, inpainting with a sampler other than PC.
  """
  task = get_task_settings(config)
  sde = sde_lib.get_sde(config)
  model, step = restore_model(config, workdir)
  classifier = None
  if task.classifier_scale:
    cworkdir = str(config.sampling.get("classifier_workdir", "") or "") or workdir
    classifier, cstep = restore_classifier(config, cworkdir)
    task.settings.update(classifier_workdir=join(cworkdir),
                         classifier_step=cstep)
  t0 = time.time()
  arrays = sample_task(config, sde, model, classifier, task,
                       stream_key(int(config.seed), "controlled"))
  samples, nfe = arrays["samples"], arrays["nfe"]
  check_finite_samples(samples, f"the checkpoint at step {step} ({task.name}, "
                       f"{task.method})")
  settings = {**sample_settings(config, step, task.n), "controlled": task.settings}
  stem = os.path.join(result_dir(workdir, f"{task.name}/{task.method}_step{step}",
                                 settings), "samples")
  pic = stem + ".png"
  if jax.process_index() == 0:
    save_npz(stem + ".npz", **arrays)
    save_picture(task.name, pic, samples, arrays.get("inputs"), arrays.get("mask"),
                 arrays.get("class_labels"), nfe)
  logging.info("%s: %d samples with %s (NFE %.0f) in %.1fs -> %s", task.name, task.n,
               task.method, nfe, time.time() - t0, pic)
  print(f"wrote {stem}.npz and {pic}")
  return stem + ".npz"
