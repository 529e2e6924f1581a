"""`python -m service.worker`: a Restore worker process (see `service.worker.runner`)."""

from service.worker.runner import main

main()
