"""The analysis chapters' machinery (01 cross-covariance, 02 CCA decomposition): the feature sets they measure
(:mod:`.features`), the one coordinate basis every encoder is read in (:mod:`.basis`), the per-encoder
measurements (:mod:`.measures`), the claims judged as data (:mod:`.claims`)
and the figures (:mod:`.figures`). The statistics themselves are the paper's mathematics in
:mod:`ada_utils.covariance` and :mod:`ada_utils.cca`, the verdicts those of :mod:`ada_utils.eval.statistics`.
:mod:`.findings` writes the chapters' result sentences from the numbers; :mod:`ada_utils.book.paths` shows paths
relative to the repository (every chapter prints them through it).
"""
