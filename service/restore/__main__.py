"""`python -m service.restore`: a Restore worker process (see `service.restore.runner`)."""

from service.restore.runner import main

main()
