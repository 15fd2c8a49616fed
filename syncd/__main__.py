try:
    from syncd.cli import main
except KeyboardInterrupt:  # Ctrl-C while the modules load: no traceback, as later
    raise SystemExit(130) from None

raise SystemExit(main())
