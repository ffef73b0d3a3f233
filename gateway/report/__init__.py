"""The clinical report: the cart's own measurements and statements
(:mod:`~gateway.report.measurements`), how a person reads the header values
(:mod:`~gateway.report.people`), and the one-page PDF (:mod:`~gateway.report.pdf`).

Every module here is pure (data in, values or bytes out); reading files and
the database is the caller's business.
"""
