from bench.zoo.run import main

main()
