from agentwire.cli import main

raise SystemExit(main())
