from dsm.cli import main

raise SystemExit(main())
