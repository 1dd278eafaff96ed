from ssam_cli.cli import main

main()
