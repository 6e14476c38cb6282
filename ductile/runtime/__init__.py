"""Running plugins: the spawn edge, the one-job executor and the boot sequence they share."""
