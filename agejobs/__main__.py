from agejobs.cli import main

raise SystemExit(main())
