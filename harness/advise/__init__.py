"""`harness advise`: measure a user's env on this machine, model every way to sample it, recommend one, check the
recommendation by measurement, and project the model to machines the user does not have.

profile.py (what is measured, by probe.py in fresh processes) -> model.py (the documented cost model) ->
search.py (the configurations, their ranking, the projection) -> validate.py (the top ones run as a suite) ->
report.py; command.py drives them. study.py checks the model against what the project's suites measured.
"""
