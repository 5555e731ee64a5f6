"""Qt-free controllers (teleop sessions, recording, jobs, autonomy) that the GUI and the headless
commands both drive. No Qt here: enforced by import-linter."""
