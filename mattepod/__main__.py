from mattepod.cli import main

raise SystemExit(main())
