from optimstudy.cli import entry

if __name__ == "__main__":  # guarded: the tracking writer process re-imports __main__
    entry()
