"""The book's machinery: the papermill runner behind ``make book`` (:mod:`.runner`), the setup cell every
chapter runs (:mod:`.notebook`), the one figure style (:mod:`.style`) and paths as pages show them (:mod:`.paths`).
"""
