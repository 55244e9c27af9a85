"""The book's machinery: the papermill runner behind ``make book`` (:mod:`.runner`), the setup cell every
chapter runs (:mod:`.notebook`) and the one figure style (:mod:`.style`).
"""
