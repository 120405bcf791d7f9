"""The system under watch: a bundled inference engine, AI gateway and lab.

Nothing here imports quell's collectors, playbooks or console: quell must
watch systems it did not write just as well as this one.
"""
