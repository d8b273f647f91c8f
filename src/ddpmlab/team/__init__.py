"""`ddpmlab team`: a team tracking stack on one machine (PostgreSQL, SeaweedFS's S3, MLflow with
logins), started, inspected and stopped from the state folder it keeps (``stack.TeamStack``).
Needs the ``team`` extra (pip install 'ddpmlab[team]') and Debian's PostgreSQL server
(apt-get install postgresql)."""
