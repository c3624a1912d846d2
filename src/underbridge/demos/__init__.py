"""Small guided runs that show one hardware fact each (`underbridge demo ...`)."""
