from mergekit_kinship.cli import main

main()
