package chain

// VerifyPipelined verifies msgs with v as VerifyStream does, each block's
// checks on its own on the pipeline's workers and the rest in order, and
// returns the first problem: for the benchmarks.
func VerifyPipelined(v *Verifier, msgs []*Msg) error {
	p := newPipeline(&v.trust, func(m *Msg, c *blockCheck) error { return v.addChecked(m, c) })
	defer p.close()
	for _, m := range msgs {
		if err := p.add(m); err != nil {
			return err
		}
	}
	return p.flush()
}
