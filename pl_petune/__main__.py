from pl_petune.cli import main
import sys
sys.exit(main())
