"""What to do about it: playbook files, actions, runner, audit."""
