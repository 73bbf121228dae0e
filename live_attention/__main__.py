from live_attention.cli import main

raise SystemExit(main())
