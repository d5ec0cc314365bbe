from stalwart.cli import main

raise SystemExit(main())
