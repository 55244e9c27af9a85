"""The analysis chapters' machinery (01 cross-covariance, 02 CCA decomposition): the feature sets they measure
(:mod:`.features`) and their figures (:mod:`.figures`). The statistics themselves are the paper's mathematics in
:mod:`ada_utils.covariance` and :mod:`ada_utils.cca`.
"""
