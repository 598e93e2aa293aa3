package pgadapter

import "regexp"

func regexpNamespace(expr string) *regexp.Regexp { return regexp.MustCompile(expr) }
