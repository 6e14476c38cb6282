"""``ductile system``: backup (plan: pure · gather and archive: edges), restore, status and
selfcheck. Sits beside ``serve``: never imports it and is never imported by it; the two
meet only through the state database, the instance lock and the control channel."""
