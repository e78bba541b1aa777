package settings

import (
	"errors"
	"testing"
)

func TestMailLanguageValidated(t *testing.T) {
	for _, tc := range []struct {
		lang string
		ok   bool
	}{{"", true}, {"en", true}, {"es", true}, {"ES", false}, {"fr", false}, {"español", false}} {
		t.Run(tc.lang, func(t *testing.T) {
			c := Config{Netboot: NetbootSettings{Mode: "off"}, Mail: MailSettings{Language: tc.lang}}
			err := c.Validate()
			if tc.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tc.ok && !errors.Is(err, ErrInvalid) {
				t.Fatalf("accepted (err %v)", err)
			}
		})
	}
}
